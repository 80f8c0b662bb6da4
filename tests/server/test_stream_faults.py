"""Faults during a stream, CORS and root path, with the app and a real ChatModel in this process: an engine that
goes away mid-stream yields an error chunk then [DONE], and the server keeps answering."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from chatplex import ChatModel
from chatplex.server.app import create_app
from chatplex.server.settings import ServerSettings
from tests.server.conftest import serving_in_thread


@pytest.fixture
def tiny_chat_model(tiny_model_dir):
    model = ChatModel({"model_name_or_path": tiny_model_dir, "infer_dtype": "float32"})
    yield model
    model.close()


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
def live_server(tiny_chat_model):
    """uvicorn on a free loopback port in a thread (httpx's ASGI transport buffers whole responses)."""
    with serving_in_thread(create_app(tiny_chat_model, ServerSettings())) as url:
        yield url


async def test_engine_failure_mid_stream_sends_error_chunk_then_done(tiny_chat_model, live_server):
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4000,
            "temperature": 0, "ignore_eos": True}
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=live_server, timeout=60) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 3:
                    # The engine shuts down under the running request (as on a fatal engine fault).
                    await asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(tiny_chat_model.engine.close(), tiny_chat_model._loop.loop)
                    )
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))
    assert "error" in error and "closed" in error["error"]["message"]
    assert all(line.startswith("data: ") for line in lines)
    # The HTTP side stays up: health answers, and a new request gets a clean error, not a hang or a 500 trace.
    async with httpx.AsyncClient(base_url=live_server, timeout=60) as client:
        health = await client.get("/health")
        assert health.status_code in (200, 503)
        again = await client.post("/v1/chat/completions", json={**body, "stream": False})
        assert again.status_code == 503 and again.json()["error"]["message"]


async def test_cors_allows_only_the_configured_origin(tiny_chat_model):
    app = create_app(tiny_chat_model, ServerSettings(allowed_origins=("http://good.example",)))
    async with client_for(app) as client:
        pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        ok = await client.options("/v1/chat/completions", headers={"Origin": "http://good.example", **pre})
        bad = await client.options("/v1/chat/completions", headers={"Origin": "http://evil.example", **pre})
    assert ok.headers.get("access-control-allow-origin") == "http://good.example"
    assert "access-control-allow-origin" not in bad.headers


async def test_root_path_prefix_serves_the_api(tiny_chat_model):
    app = create_app(tiny_chat_model, ServerSettings(root_path="/llm"))
    async with client_for(app) as client:
        resp = await client.get("/llm/v1/models")
        spec = await client.get("/llm/openapi.json")
    assert resp.status_code == 200 and resp.json()["data"]
    assert spec.status_code == 200 and spec.json()["servers"][0]["url"] == "/llm"
