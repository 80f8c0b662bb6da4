"""The openai engine: against `chatplex serve` (a tiny model) for pass-through, and a scripted loopback HTTP
server for retries and error mapping."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai as openai_sdk
import pytest

from chatplex import ChatModel
from chatplex.config import load_args
from chatplex.engines.launcher import ServerProcess, free_port
from chatplex.engines.openai_client import OpenAIEngine, sampling_body
from chatplex.errors import ConfigError, EngineClosedError, EngineError, InvalidRequestError, UnsupportedFeatureError
from chatplex.sampling import build_sampling_params
from chatplex.types import GenerationRequest

KEY = "sk-test"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir) -> Iterator[ServerProcess]:
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "chatplex.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--model", tiny_model_dir("llama"), "--infer-dtype", "float32", "--api-key", KEY,
         "--template", "hermes"],  # a template that renders tools, so their arrival shows in the prompt
        port,
    )
    try:
        asyncio.run(server.wait_healthy(180))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def remote(tiny_server) -> Iterator[ChatModel]:
    model = ChatModel({"infer_backend": "openai", "api_base": f"{tiny_server.url}/v1", "api_key": KEY})
    yield model
    model.close()


@pytest.fixture(scope="module")
def direct(tiny_server) -> openai_sdk.OpenAI:
    return openai_sdk.OpenAI(base_url=f"{tiny_server.url}/v1", api_key=KEY, max_retries=0)


def test_messages_and_tools_pass_through(remote, direct):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}]
    ours = remote.chat(messages, tools=TOOLS, do_sample=False, max_new_tokens=10)[0]
    theirs = direct.chat.completions.create(
        model=remote.model_name, messages=messages, tools=TOOLS, temperature=0, max_tokens=10
    )
    assert ours.response_text == theirs.choices[0].message.content
    assert (ours.prompt_length, ours.response_length) == (theirs.usage.prompt_tokens, theirs.usage.completion_tokens)
    without_tools = remote.chat(messages, do_sample=False, max_new_tokens=10)[0]
    assert without_tools.prompt_length < ours.prompt_length  # the tools reached the server's template


def test_prompt_requests_use_completions(remote, direct):
    request = remote.build_request(prompt="Once upon a time", do_sample=False, max_new_tokens=6, ignore_eos=True)
    text = "".join(d.text for d in remote.generate(request))
    theirs = direct.completions.create(
        model=remote.model_name, prompt="Once upon a time", temperature=0, max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert text == theirs.choices[0].text


def test_logprobs_returned_only_when_asked(remote):
    plain = remote.chat([{"role": "user", "content": "Hi"}], do_sample=False, max_new_tokens=4, ignore_eos=True)[0]
    assert plain.logprobs is None
    asked = remote.chat([{"role": "user", "content": "Hi"}], do_sample=False, max_new_tokens=4, ignore_eos=True,
                        logprobs=True, top_logprobs=2)[0]
    assert len(asked.logprobs) == 4
    assert all(len(t.top) == 2 and t.logprob <= 0 for t in asked.logprobs)
    assert "".join(t.token for t in asked.logprobs) == asked.response_text


def test_server_validation_errors_map_to_invalid_request(remote):
    with pytest.raises(InvalidRequestError) as e:
        remote.chat([{"role": "user", "content": "Hi"}], logit_bias={"999999999": 1})
    assert e.value.param == "logit_bias"


def test_wrong_api_key_is_a_config_error(tiny_server):
    with pytest.raises(ConfigError) as e:
        ChatModel({"infer_backend": "openai", "api_base": f"{tiny_server.url}/v1", "api_key": "wrong"})
    assert e.value.param == "api_key" and tiny_server.url in e.value.message


def test_api_base_is_required():
    with pytest.raises(ConfigError) as e:
        ChatModel({"infer_backend": "openai"})
    assert e.value.param == "api_base"


def test_max_length_is_unsupported():
    with pytest.raises(UnsupportedFeatureError):
        sampling_body(build_sampling_params({"max_length": 100}))


def test_extensions_sent_only_when_set():
    body = sampling_body(build_sampling_params({"temperature": 0.5, "max_tokens": 7}))
    assert body == {"temperature": 0.5, "top_p": 1.0, "max_tokens": 7, "n": 1}
    body = sampling_body(build_sampling_params({"top_k": 5, "stop": "x", "seed": 3, "min_new_tokens": 2}))
    assert (body["top_k"], body["stop"], body["seed"], body["min_tokens"]) == (5, ["x"], 3, 2)


# ---- a scripted server for retries and failures ------------------------------------------------------------
class Script:
    """Answers requests with the next scripted (status, body) and records what it was sent."""

    def __init__(self, answers: list[tuple[int, object]]) -> None:
        self.answers = answers
        self.seen: list[dict] = []


def _sse(text: str) -> bytes:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None,
                      "logprobs": {"content": [{"token": text, "logprob": -0.1, "top_logprobs": []}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}},
    ]
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            script.seen.append(json.loads(self.rfile.read(length)))
            status, body = script.answers.pop(0) if script.answers else (200, "ok")
            payload = _sse(body) if status == 200 else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "text/event-stream" if status == 200 else "application/json")
            if status in (429, 503):
                self.send_header("retry-after", "0")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    httpd.shutdown()
    httpd.server_close()


def _engine(url: str) -> OpenAIEngine:
    engine = OpenAIEngine(load_args({"infer_backend": "openai", "api_base": url, "model_name_or_path": "m"}))
    engine.backoff_s = 0.01
    return engine


async def _run(engine: OpenAIEngine, **kw: object) -> list:
    await engine.start()
    try:
        req = GenerationRequest(build_sampling_params(dict(kw)), messages=[{"role": "user", "content": "hi"}])
        return [d async for d in engine.generate(req)]
    finally:
        await engine.close()


async def test_retries_429_and_503_then_succeeds(scripted):
    url, script = scripted
    script.answers = [(429, {"error": {"message": "busy"}}), (503, {"error": {"message": "loading"}}), (200, "hello")]
    deltas = await _run(_engine(url))
    assert len(script.seen) == 3
    assert "".join(d.text for d in deltas) == "hello"
    assert (deltas[-1].finish_reason, deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == ("stop", 11, 1)


async def test_gives_up_after_retries(scripted):
    url, script = scripted
    script.answers = [(503, {"error": {"message": "draining"}})] * 10
    engine = _engine(url)
    engine.max_retries = 2
    with pytest.raises(EngineClosedError, match="draining"):
        await _run(engine)
    assert len(script.seen) == 3


async def test_errors_are_not_retried_and_keep_param(scripted):
    url, script = scripted
    script.answers = [(400, {"error": {"message": "temperature: bad", "param": "temperature", "type": "invalid_request_error"}})]
    with pytest.raises(InvalidRequestError) as e:
        await _run(_engine(url))
    assert e.value.param == "temperature" and len(script.seen) == 1


async def test_request_body(scripted):
    url, script = scripted
    await _run(_engine(url), temperature=0.3, n=1, stop=["END"], max_tokens=9)
    body = script.seen[0]
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["model"] == "m" and body["stream"]
    assert (body["temperature"], body["stop"], body["max_tokens"]) == (0.3, ["END"], 9)


async def test_connection_failure_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = _engine(url)
    engine.max_retries = 1
    with pytest.raises(EngineError, match=f"Cannot connect.*{url}"):
        await _run(engine)
