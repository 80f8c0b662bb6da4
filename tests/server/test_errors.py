"""Bad input, auth, limits: OpenAI's error envelope with the right status, and the server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.server.conftest import SERVED_NAME

Q = [{"role": "user", "content": "Hi"}]


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_wrong_or_missing_key_is_401(server):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    err = _error(httpx.post(f"{server.url}/v1/chat/completions", json={"messages": Q}), 401)
    assert err["type"] == "authentication_error"


def test_probes_and_page_need_no_key(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert "chatplex:num_requests_running" in httpx.get(f"{server.url}/metrics").text
    assert "<textarea" in httpx.get(f"{server.url}/").text


def test_models(client):
    assert [m.id for m in client.models.list().data] == [SERVED_NAME]
    assert client.models.retrieve(SERVED_NAME).id == SERVED_NAME
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found"


def test_tools_reach_a_model_whose_template_ignores_them(client, http):
    """SmolLM2's template does not render tools: the model card says the generic tool prompt carries them, and a
    request with a tool costs more prompt tokens than the same request without."""
    card = http.get(f"/v1/models/{SERVED_NAME}").json()
    assert card["tool_prompt"] == "generic"
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
    bare = client.chat.completions.create(model=SERVED_NAME, messages=Q, max_tokens=1)
    with_tool = client.chat.completions.create(model=SERVED_NAME, messages=Q, max_tokens=1, tools=[tool])
    assert with_tool.usage.prompt_tokens > bare.usage.prompt_tokens + 40


def test_unknown_model_in_a_request_is_404(http):
    err = _error(http.post("/v1/chat/completions", json={"model": "gpt-4", "messages": Q}), 404)
    assert err["param"] == "model"
    _error(http.get("/v1/no/such/route"), 404)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": Q, "temperature": "hot"}, "temperature"),
        ({"messages": Q, "temperature": 3.5}, "temperature"),
        ({"messages": Q, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"messages": Q, "n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": Q, "stop": [""]}, "stop"),
        ({"messages": Q, "max_tokens": 0}, "max_tokens"),
        ({}, "messages"),
    ],
)
def test_validation_errors_are_400_naming_the_field(http, body, param):
    err = _error(http.post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err
    assert param.split("[")[0].split(".")[0] in err["message"] or err["param"] in err["message"]


def test_malformed_json_is_400(http):
    r = http.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    _error(r, 400)


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {"prompt": "x", "echo": True}, "echo"),
        ("/v1/completions", {"prompt": "x", "best_of": 3}, "best_of"),
    ],
)
def test_fields_that_would_change_results_are_400_unsupported(http, path, body, param):
    err = _error(http.post(path, json=body), 400)
    assert err["param"] == param and err["code"] == "unsupported_parameter"


def test_unknown_fields_are_ignored(http):
    r = http.post("/v1/chat/completions", json={"messages": Q, "max_tokens": 2, "some_future_field": {"x": 1}})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("stream", [False, True])
def test_context_length_exceeded_is_400_even_when_streaming(http, stream):
    long = [{"role": "user", "content": "word " * 1100}]
    err = _error(http.post("/v1/chat/completions", json={"messages": long, "stream": stream}), 400)
    assert err["code"] == "context_length_exceeded"
    err = _error(http.post("/v1/chat/completions", json={"messages": Q, "max_tokens": 5000, "stream": stream}), 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"


def test_body_over_the_limit_is_413(http):
    big = [{"role": "user", "content": "x" * 70_000}]
    _error(http.post("/v1/chat/completions", json={"messages": big}), 413)

    def chunks():  # no Content-Length: the limit must hold for chunked bodies too
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}]}'

    _error(http.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}), 413)


def test_score_on_a_generative_model_is_400(http):
    err = _error(http.post("/v1/score", json={"input": ["a", "b"]}), 400)
    assert "reward model" in err["message"]
    # LLaMA-Factory's request shape, with whatever model name its clients send.
    err = _error(http.post("/v1/score/evaluation", json={"model": "gpt-3.5-turbo", "messages": ["a"], "max_length": 8}), 400)
    assert "reward model" in err["message"]


def test_cors_is_closed_by_default(server):
    r = httpx.options(f"{server.url}/v1/models", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers


def test_server_still_answers_after_errors(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=Q, max_tokens=2)
    assert r.usage.completion_tokens <= 2
    assert httpx.get(str(client.base_url).replace("/v1/", "/health")).status_code == 200
