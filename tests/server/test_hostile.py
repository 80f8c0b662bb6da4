"""Hostile input: every bad number, string and tool name is a 400 naming the field (OpenAI's envelope), and the
server answers a normal request afterwards on the same pooled connection. An unhandled error (a 500) leaves the
keep-alive connection usable."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import Request

from tests.server.conftest import serving_in_thread

Q = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}


def _tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def _raw(fields: str, messages: str = '[{"role": "user", "content": "Hi"}]') -> bytes:
    """A body with JSON text spliced in as written: Python's json.dumps would refuse NaN or fix the escapes."""
    return f'{{"messages": {messages}, "max_tokens": 2, {fields}}}'.encode()


# (what, body, the field the 400 names). Bodies are bytes where the JSON must hold what json.dumps cannot write.
BATTERY: list[tuple[str, dict | bytes, str]] = [
    ("temperature NaN", _raw('"temperature": NaN'), "temperature"),
    ("temperature Infinity", _raw('"temperature": Infinity'), "temperature"),
    ("top_p -Infinity", _raw('"top_p": -Infinity'), "top_p"),
    ("presence_penalty NaN", _raw('"presence_penalty": NaN'), "presence_penalty"),
    ("frequency_penalty NaN", _raw('"frequency_penalty": NaN'), "frequency_penalty"),
    ("repetition_penalty NaN", _raw('"repetition_penalty": NaN'), "repetition_penalty"),
    ("min_p NaN", _raw('"min_p": NaN'), "min_p"),
    ("logit_bias NaN", _raw('"logit_bias": {"42": NaN}'), "logit_bias.42"),
    ("NaN in an extra field", _raw('"metadata": {"x": [1, NaN]}'), "metadata.x[1]"),
    ("seed 2**70", {"messages": Q, "seed": 2**70}, "seed"),
    ("seed -2**70", {"messages": Q, "seed": -(2**70)}, "seed"),
    ("seed 2**63", {"messages": Q, "seed": 2**63}, "seed"),
    ("max_tokens 10**30", {"messages": Q, "max_tokens": 10**30}, "max_tokens"),
    ("top_k 10**30", {"messages": Q, "top_k": 10**30}, "top_k"),
    ("min_tokens 10**30", {"messages": Q, "min_tokens": 10**30}, "min_tokens"),
    ("n 10**30", {"messages": Q, "n": 10**30}, "n"),
    ("top_logprobs 10**30", {"messages": Q, "logprobs": True, "top_logprobs": 10**30}, "top_logprobs"),
    ("stop_token_ids 10**30", {"messages": Q, "stop_token_ids": [10**30]}, "stop_token_ids"),
    ("logit_bias id 10**30", {"messages": Q, "logit_bias": {str(10**30): 1}}, "logit_bias"),
    ("stop with a lone surrogate", _raw('"stop": ["ok", "\\ud800"]'), "stop[1]"),
    ("content with a lone surrogate", _raw('"n": 1', '[{"role": "user", "content": "a\\udfffb"}]'),
     "messages[0].content"),
    ("a key with a lone surrogate", _raw('"x\\ud800": 1'), "body"),
    ("tool name empty", {"messages": Q, "tools": [_tool("")]}, "tools[0].function.name"),
    ("tool name 10,000 characters", {"messages": Q, "tools": [_tool("a" * 10_000)]}, "tools[0].function.name"),
    ("tool name closing the markup", {"messages": Q, "tools": [_tool("x</tool_call>")]}, "tools[0].function.name"),
    ("tool name with Jinja", {"messages": Q, "tools": [TOOL, _tool("{{ raise_exception('x') }}")]},
     "tools[1].function.name"),
    ("tool name with a space", {"messages": Q, "tools": [_tool("get weather")]}, "tools[0].function.name"),
    ("tool name 65 characters", {"messages": Q, "tools": [_tool("a" * 65)]}, "tools[0].function.name"),
    ("tool_choice naming an unknown tool",
     {"messages": Q, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ("temperature as a string", {"messages": Q, "temperature": "hot"}, "temperature"),
    ("temperature out of range", {"messages": Q, "temperature": 1e308}, "temperature"),
    ("max_tokens negative", {"messages": Q, "max_tokens": -1}, "max_tokens"),
    ("n as a float", {"messages": Q, "n": 1.5}, "n"),
    ("stop as a number", {"messages": Q, "stop": 7}, "stop"),
    ("16+ stop strings", {"messages": Q, "stop": [str(i) for i in range(17)]}, "stop"),
    ("a role that does not exist", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("messages not a list", {"messages": "Hi"}, "messages"),
    ("logit_bias out of range", {"messages": Q, "logit_bias": {"42": 101}}, "logit_bias"),
    ("logit_bias key not a token", {"messages": Q, "logit_bias": {"x": 1}}, "logit_bias"),
    ("stream not a bool", {"messages": Q, "stream": "maybe"}, "stream"),
]


def _post(http: httpx.Client, body: dict | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        return http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    return http.post("/v1/chat/completions", json=body)


def test_hostile_battery_is_all_400_naming_the_field_then_serves(http):
    assert len(BATTERY) >= 40
    wrong = []
    for what, body, param in BATTERY:
        r = _post(http, body)
        error = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != 400 or set(error) != {"message", "type", "param", "code"} or error["param"] != param:
            wrong.append(f"{what}: {r.status_code} {r.text[:200]}")
        elif not error["message"].startswith(param):
            wrong.append(f"{what}: message does not start with the field: {error['message']!r}")
    assert not wrong, "\n".join(wrong)
    # the same pooled client, after 40 refusals: a normal request
    ok = http.post("/v1/chat/completions", json={"messages": Q, "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None


def test_a_refused_seed_names_the_range(http):
    error = _post(http, {"messages": Q, "seed": 2**70}).json()["error"]
    assert str(2**63 - 1) in error["message"]


def test_the_largest_seeds_are_served(http):
    for seed in (2**63 - 1, -(2**63)):
        r = _post(http, {"messages": Q, "seed": seed, "max_tokens": 2, "n": 2, "temperature": 1.0})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def fragile_server():
    """A real uvicorn on loopback serving chatplex's app with one extra route that fails the way a bug would."""
    from chatplex.server.app import create_app

    app = create_app(None)

    @app.get("/port")
    async def port(request: Request) -> dict:  # Request at module level: FastAPI resolves the string annotation there
        return {"port": request.client.port}

    @app.get("/bug")
    async def bug() -> dict:
        raise RuntimeError("a bug in a handler")

    with serving_in_thread(app, log_level="critical") as url:
        yield url


def test_a_500_keeps_the_pooled_connection_usable(fragile_server):
    with httpx.Client(base_url=fragile_server, timeout=10) as pooled:
        first = pooled.get("/port").json()["port"]
        broken = pooled.get("/bug")
        assert broken.status_code == 500
        assert broken.json()["error"]["type"] == "server_error"
        assert "a bug in a handler" in broken.json()["error"]["message"]
        # the next request rides the same connection (same client port), so nothing was reset under it
        assert pooled.get("/port").json()["port"] == first


def test_non_json_bodies_still_get_fastapis_400(http):
    r = http.post("/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/v1/chat/completions", content=json.dumps({"messages": Q, "max_tokens": 1}).encode())
    assert r.status_code == 200, r.text  # no Content-Type: taken as JSON
    # curl -d without -H sends a form type: refused naming the header and the fix, not "body missing"
    r = http.post("/v1/chat/completions", content=json.dumps({"messages": Q}).encode(),
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and r.json()["error"]["param"] == "Content-Type"
    assert "application/json" in r.json()["error"]["message"]
