"""The openai engine against llama.cpp's own OpenAI server (`python -m llama_cpp.server`) on the embedded GGUF.

Skipped with a reason when the server's extra (`pip install chatplex[llamacpp-server]`) is missing. One server
for the module, one thread, greedy decoding, a few tokens per request.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator

import httpx
import openai as openai_sdk
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install-llamacpp)")
pytest.importorskip(
    "llama_cpp.server.app", reason="llama.cpp's server extra is missing: pip install 'chatplex[llamacpp-server]'"
)

from chatplex import ChatModel  # noqa: E402
from chatplex.config import load_args  # noqa: E402
from chatplex.engines.launcher import ServerProcess, free_port  # noqa: E402
from chatplex.engines.openai_client import OpenAIEngine  # noqa: E402
from chatplex.errors import EngineError  # noqa: E402
from chatplex.models.embedded import embedded_gguf_path  # noqa: E402
from chatplex.sampling import build_sampling_params  # noqa: E402
from chatplex.types import GenerationRequest  # noqa: E402

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
START_TIMEOUT_S = 120


def _wait_models(server: ServerProcess, timeout: float) -> None:
    """llama.cpp's server has no /health: it is up once /v1/models answers."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited while starting:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/v1/models", timeout=5.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"llama_cpp.server not up after {timeout} s:\n{server.log_tail()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[ServerProcess]:
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "llama_cpp.server", "--model", embedded_gguf_path(), "--host", "127.0.0.1",
         "--port", str(port), "--n_threads", "1", "--n_ctx", "2048"],
        port,
    )
    try:
        _wait_models(server, START_TIMEOUT_S)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def remote(llama_server) -> Iterator[ChatModel]:
    model = ChatModel({"infer_backend": "openai", "api_base": f"{llama_server.url}/v1"})
    yield model
    model.close()


@pytest.fixture(scope="module")
def direct(llama_server) -> openai_sdk.OpenAI:
    return openai_sdk.OpenAI(base_url=f"{llama_server.url}/v1", api_key="none", max_retries=0)


def test_streams_what_the_server_answers(remote, direct):
    deltas = list(remote.stream_chat(FRANCE, do_sample=False, max_new_tokens=12))
    assert len(deltas) > 1  # streamed, not one block
    theirs = direct.chat.completions.create(model=remote.model_name, messages=FRANCE, temperature=0, max_tokens=12)
    assert "".join(deltas) == theirs.choices[0].message.content


def test_response_carries_usage(remote, direct):
    ours = remote.chat(FRANCE, do_sample=False, max_new_tokens=12)[0]
    theirs = direct.chat.completions.create(model=remote.model_name, messages=FRANCE, temperature=0, max_tokens=12)
    assert ours.response_text == theirs.choices[0].message.content
    assert ours.response_length == theirs.usage.completion_tokens
    assert ours.finish_reason == theirs.choices[0].finish_reason


def test_stop_string_ends_before_it(remote):
    full = remote.chat(FRANCE, do_sample=False, max_new_tokens=12)[0].response_text
    assert len(full) > 8
    stop = full[5:8]  # a stop string in the middle of what the model says unstopped
    cut = remote.chat(FRANCE, do_sample=False, max_new_tokens=12, stop=[stop])[0]
    assert cut.response_text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_logprobs_when_asked(remote):
    plain = remote.chat(FRANCE, do_sample=False, max_new_tokens=4)[0]
    assert plain.logprobs is None
    asked = remote.chat(FRANCE, do_sample=False, max_new_tokens=4, logprobs=True, top_logprobs=2)[0]
    assert asked.response_text == plain.response_text
    assert len(asked.logprobs) == asked.response_length
    assert all(t.logprob <= 0 and len(t.top) == 2 for t in asked.logprobs)
    assert "".join(t.token for t in asked.logprobs) == asked.response_text


def test_n_above_one_fails_clearly(remote):
    # llama.cpp's server drops `n` and answers one choice: the engine says so instead of hanging or truncating.
    with pytest.raises(EngineError, match=r"n=2"):
        remote.chat(FRANCE, do_sample=True, max_new_tokens=4, n=2)


async def test_cancelled_stream_is_aborted_and_server_keeps_serving(llama_server):
    engine = OpenAIEngine(load_args({"infer_backend": "openai", "api_base": f"{llama_server.url}/v1"}))
    await engine.start()
    try:
        long = GenerationRequest(build_sampling_params({"max_tokens": 400, "ignore_eos": True, "temperature": 0}),
                                 messages=FRANCE)
        stream = engine.generate(long)
        first = await anext(stream)
        assert first.text and first.finish_reason is None
        await stream.aclose()
        assert engine.stats().aborted_requests == 1 and engine.stats().running == 0
        short = GenerationRequest(build_sampling_params({"max_tokens": 3, "temperature": 0}), messages=FRANCE)
        deltas = [d async for d in engine.generate(short)]
        assert deltas[-1].finish_reason is not None
        assert engine.stats().finished_requests == 1
    finally:
        await engine.close()


async def test_connection_error_after_the_server_goes_away(llama_server):
    # Runs last in the module: it stops the shared server.
    url = f"{llama_server.url}/v1"
    engine = OpenAIEngine(load_args({"infer_backend": "openai", "api_base": url}))
    engine.max_retries, engine.backoff_s = 1, 0.01
    await engine.start()
    try:
        await asyncio.to_thread(llama_server.stop)
        request = GenerationRequest(build_sampling_params({"max_tokens": 3}), messages=FRANCE)
        with pytest.raises(EngineError, match=f"Cannot connect.*{url}"):
            [d async for d in engine.generate(request)]
    finally:
        await engine.close()
