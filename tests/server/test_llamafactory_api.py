"""LLaMA-Factory's API habits against a real server (SmolLM2, fp32, greedy), with the official openai client.

OpenAI's semantics stay the default (an unknown model is a 404, presence_penalty is additive); served-model-name
aliases and --accept-any-model let LLaMA-Factory's scripts (which send model "test") in, and --api-mode
llamafactory gives its meaning of presence_penalty and of the `function` role. do_sample is honoured in both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest

from chatplex.server.app import create_app
from chatplex.server.settings import ServerSettings
from tests.server.conftest import serving_in_thread

ASK = [{"role": "user", "content": "Name three colours."}]


@contextmanager
def client_for(chat_model, **settings) -> Iterator[openai.OpenAI]:
    with serving_in_thread(create_app(chat_model, ServerSettings(**settings))) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="0", max_retries=0)


def _reply(client: openai.OpenAI, model: str = "smol", messages=ASK, **kw) -> str:
    kw.setdefault("seed", 3)
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=12, **kw)
    return r.choices[0].message.content or ""


def test_model_names(chat_model):
    with client_for(chat_model, served_model_name="smol", model_aliases=("qwen3-ft",)) as client:
        assert [m.id for m in client.models.list().data][0] == "smol"
        assert _reply(client, "qwen3-ft", temperature=0) == _reply(client, "smol", temperature=0)
        with pytest.raises(openai.NotFoundError, match="The model 'test' does not exist"):
            _reply(client, "test")
    with client_for(chat_model, served_model_name="smol", accept_any_model=True) as client:
        assert _reply(client, "test", temperature=0) == _reply(client, "smol", temperature=0)


def test_do_sample_false_is_greedy_whatever_the_temperature(chat_model):
    with client_for(chat_model, served_model_name="smol") as client:
        greedy = _reply(client, temperature=0)
        assert _reply(client, temperature=1.5, top_p=1.0, extra_body={"do_sample": False}) == greedy
        sampled = {_reply(client, temperature=1.5, top_p=1.0, seed=s) for s in range(4)}
        assert sampled != {greedy}  # sampling does happen without it


def test_llamafactory_mode_penalty_means_repetition_penalty(chat_model):
    with client_for(chat_model, served_model_name="smol") as client:
        as_repetition = _reply(client, temperature=0, extra_body={"repetition_penalty": 1.5})
        additive = _reply(client, temperature=0, presence_penalty=1.5)
    with client_for(chat_model, served_model_name="smol", api_mode="llamafactory") as client:
        assert _reply(client, "test", temperature=0, presence_penalty=1.5) == as_repetition
        with pytest.raises(openai.BadRequestError, match="give one of presence_penalty and repetition_penalty"):
            _reply(client, temperature=0, presence_penalty=1.5, extra_body={"repetition_penalty": 1.2})
    assert as_repetition != additive  # the two meanings differ on this prompt, so the check above can fail


def test_llamafactory_mode_function_role_is_the_assistants_call(chat_model):
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    result = {"role": "tool", "content": "21 C"}
    lf_messages = [ASK[0], {"role": "function", "content": json.dumps([call])}, result]
    openai_messages = [ASK[0], {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(call["arguments"])}}]},
        {**result, "tool_call_id": "call_1"}]
    with client_for(chat_model, served_model_name="smol", api_mode="llamafactory") as client:
        lf = client.chat.completions.create(model="test", messages=lf_messages, tools=tools, max_tokens=1)
        with pytest.raises(openai.BadRequestError, match=r"messages\[1\].content: a function message"):
            client.chat.completions.create(model="test", messages=[ASK[0], {"role": "function", "content": "hi"}],
                                           max_tokens=1)
    with client_for(chat_model, served_model_name="smol") as client:
        oa = client.chat.completions.create(model="smol", messages=openai_messages, tools=tools, max_tokens=1)
    assert lf.usage.prompt_tokens == oa.usage.prompt_tokens  # the same conversation reached the model


def test_webchat_serves_the_page_where_gradio_would(tmp_path):
    """`chatplex webchat CONFIG.yaml` with LLaMA-Factory's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from tests.server.conftest import free_port

    port = free_port()
    cfg = tmp_path / "smol.yaml"
    cfg.write_text("infer_dtype: float32\ndo_sample: false\n")
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_SHARE": "1"}
    log = tmp_path / "webchat.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chatplex.cli.main", "webchat", str(cfg), "max_new_tokens=8"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        text = log.read_text()
        assert f"open http://127.0.0.1:{port}/" in text and "GRADIO_SHARE" in text
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize(("argv", "mode"), [(["api"], "llamafactory"), (["serve"], "openai"),
                                            (["api", "--api-mode", "openai"], "openai"),
                                            (["serve", "--api-mode", "llamafactory"], "llamafactory")])
def test_api_command_speaks_llamafactorys_api(argv, mode, monkeypatch):
    """`chatplex api` is llamafactory-cli's command line, so its API (any model name, its `function` role) unless
    told otherwise; `chatplex serve` stays OpenAI's."""
    from chatplex.cli.main import build_parser
    from chatplex.cli.serve import settings_from

    monkeypatch.delenv("CHATPLEX_API_MODE", raising=False)
    settings = settings_from(build_parser().parse_args(argv))
    assert settings.api_mode == mode
    assert settings.accept_any_model == (mode == "llamafactory")
