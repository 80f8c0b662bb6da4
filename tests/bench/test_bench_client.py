"""`chatplex bench` end to end against a real streaming HTTP server on loopback.

The server here is a small OpenAI-compatible FastAPI app that streams canned tokens with known delays: it tests
the client's protocol handling and arithmetic, not a model (tests/bench/test_bench_serve.py runs the real thing).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402

from chatplex.bench import BenchConfig, BenchPrompt, arrival_offsets, load_jsonl, random_prompts, run_benchmark  # noqa: E402
from chatplex.cli.main import main  # noqa: E402
from chatplex.errors import ChatplexError  # noqa: E402

MODEL = "canned-model"
FIRST_TOKEN_DELAY = 0.05
TOKEN_DELAY = 0.005


@dataclass
class ServerState:
    payloads: list[dict[str, Any]] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    gather: int = 0  # hold every request until this many have arrived (proves they overlap)
    send_usage: bool = True
    api_key: str | None = None
    arrived: int = 0
    released: asyncio.Event | None = None


def build_app(state: ServerState) -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    async def handle(request: fastapi.Request, chat: bool) -> Any:
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            return JSONResponse({"error": {"message": "bad key", "type": "auth"}}, status_code=401)
        body = await request.json()
        state.payloads.append(body)
        text = json.dumps(body.get("messages") or body.get("prompt"))
        if "FAIL" in text:
            return JSONResponse({"error": {"message": "canned failure", "type": "server_error"}}, status_code=500)
        return StreamingResponse(stream(body, chat, mid_error="MIDERR" in text), media_type="text/event-stream")

    async def stream(body: dict, chat: bool, mid_error: bool) -> Any:
        state.inflight += 1
        state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            if state.gather:
                await _gather()
            if chat:  # a role-only chunk first, as OpenAI sends: it carries no text and must not count as TTFT
                yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            await asyncio.sleep(FIRST_TOKEN_DELAY)
            n = body["max_tokens"]
            for i in range(n):
                if mid_error and i == 1:
                    yield _sse({"error": {"message": "canned mid-stream error"}})
                    break
                piece = {"delta": {"content": f"t{i} "}} if chat else {"text": f"t{i} "}
                yield _sse({"choices": [{"index": 0, **piece, "finish_reason": "length" if i == n - 1 else None}]})
                await asyncio.sleep(TOKEN_DELAY)
            if state.send_usage and body.get("stream_options", {}).get("include_usage"):
                yield _sse({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}})
            yield "data: [DONE]\n\n"
        finally:
            state.inflight -= 1

    async def _gather() -> None:
        if state.released is None:
            state.released = asyncio.Event()
        state.arrived += 1
        if state.arrived >= state.gather:
            state.released.set()
        await asyncio.wait_for(state.released.wait(), timeout=20)

    @app.post("/v1/chat/completions")
    async def chat(request: fastapi.Request) -> Any:
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: fastapi.Request) -> Any:
        return await handle(request, chat=False)

    return app


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    config = uvicorn.Config(build_app(state), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        threading.Event().wait(0.05)
    assert srv.started, "the test server did not start"
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", state
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def base_url(server) -> str:
    url, state = server
    fresh = ServerState()
    state.__dict__.update(fresh.__dict__)
    return url


@pytest.fixture
def state(server) -> ServerState:
    return server[1]


def bench(config: BenchConfig, prompts: list[BenchPrompt]):
    return asyncio.run(run_benchmark(config, prompts, progress=False))


def test_all_at_once_streams_every_request_concurrently(base_url, state):
    state.gather = 6  # the server holds each request until all six arrived: a serial client would time out
    prompts = random_prompts(6, input_len=10, output_len=4, seed=1)
    result = bench(BenchConfig(base_url=base_url), prompts)
    s = result.summary
    assert (s.completed, s.failed) == (6, 0), [m.error for m in result.requests]
    assert state.max_inflight == 6 and s.max_concurrent_requests == 6
    assert result.model == MODEL  # found at GET /models
    assert (s.total_output_tokens, s.total_input_tokens) == (24, 66)  # from the usage chunks
    for m in result.requests:
        assert m.ttft >= FIRST_TOKEN_DELAY  # the server slept that long before any text
        assert m.e2e >= m.ttft and len(m.itls) == 3
        assert sum(m.itls) == pytest.approx(m.chunk_offsets[-1] - m.chunk_offsets[0])
    body = state.payloads[0]
    assert body["max_tokens"] == 4 and body["ignore_eos"] is True and body["temperature"] == 0.0
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert {p["messages"][0]["content"] for p in state.payloads} == {p.prompt for p in prompts}


def test_max_concurrency_caps_requests_in_flight(base_url, state):
    state.gather = 2  # the first two must overlap, or they time out
    result = bench(BenchConfig(base_url=base_url, max_concurrency=2), random_prompts(6, 5, 3, seed=2))
    assert result.summary.completed == 6
    assert state.max_inflight == 2 and result.summary.max_concurrent_requests <= 2


def test_without_usage_each_chunk_is_a_token(base_url, state):
    state.send_usage = False
    result = bench(BenchConfig(base_url=base_url, model="m"), random_prompts(3, input_len=9, output_len=5, seed=3))
    assert result.summary.total_output_tokens == 15
    assert result.summary.total_input_tokens == 27  # the client's own count of the word prompts


def test_completions_endpoint_and_extra_body(base_url, state):
    config = BenchConfig(base_url=base_url, endpoint="completions", ignore_eos=False, extra_body={"top_k": 1})
    result = bench(config, random_prompts(2, 4, 3, seed=4))
    assert result.summary.completed == 2 and result.summary.total_output_tokens == 6
    body = state.payloads[0]
    assert "prompt" in body and "messages" not in body and "ignore_eos" not in body and body["top_k"] == 1


def test_failures_are_counted_with_their_messages(base_url, state, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "FAIL please"}\n{"prompt": "MIDERR please"}\n')
    result = bench(BenchConfig(base_url=base_url), load_jsonl(str(path), output_len=4))
    s = result.summary
    assert (s.completed, s.failed) == (1, 2)
    errors = sorted(m.error for m in result.requests if m.error)
    assert errors == ["HTTP 500: canned failure", "canned mid-stream error"]


def test_api_key_is_sent_as_bearer(base_url, state):
    state.api_key = "sekrit"
    prompts = random_prompts(2, 4, 2)
    denied = bench(BenchConfig(base_url=base_url, model="m"), prompts)
    assert denied.summary.failed == 2 and denied.requests[0].error == "HTTP 401: bad key"
    allowed = bench(BenchConfig(base_url=base_url, model="m", api_key="sekrit"), prompts)
    assert allowed.summary.completed == 2
    assert "api_key" not in allowed.to_dict()["config"]


def test_request_rate_spaces_out_sends(base_url, state):
    prompts = random_prompts(5, 4, 2, seed=5)
    result = bench(BenchConfig(base_url=base_url, request_rate=40.0, seed=5), prompts)
    offsets = arrival_offsets(5, 40.0, seed=5)
    assert offsets[-1] > 0
    for m, offset in zip(result.requests, offsets):
        assert m.start >= offset - 1e-3  # never sent before its Poisson arrival time


def test_unreachable_server(free_port):
    url = f"http://127.0.0.1:{free_port}/v1"
    with pytest.raises(ChatplexError, match="cannot reach"):
        bench(BenchConfig(base_url=url), random_prompts(1, 4, 2))
    result = bench(BenchConfig(base_url=url, model="m"), random_prompts(2, 4, 2))
    assert result.summary.failed == 2 and "ConnectError" in result.requests[0].error


@pytest.fixture
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_writes_table_json_and_plot(base_url, state, tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    code = main([
        "bench", "--base-url", base_url, "--num-prompts", "4", "--input-len", "6", "--output-len", "3",
        "--max-concurrency", "2", "--percentiles", "50,90", "--result-json", str(out_json), "--plot", str(out_png),
        "--disable-tqdm", "--extra-body", '{"seed": 7}',
    ])
    assert code == 0
    table = capsys.readouterr().out
    assert "Serving Benchmark Result" in table and "P90 TTFT (ms):" in table
    data = json.loads(out_json.read_text())
    assert data["summary"]["completed"] == 4 and data["summary"]["total_output_tokens"] == 12
    assert set(data["summary"]["ttft"]["percentiles"]) == {"p50", "p90"}
    assert len(data["requests"]) == 4 and data["config"]["max_concurrency"] == 2
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert state.payloads[0]["seed"] == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--request-rate", "0"], "request_rate must be > 0"),
        (["--max-concurrency", "0"], "max_concurrency must be >= 1"),
        (["--extra-body", "[1]"], "--extra-body: expected a JSON object"),
        (["--percentiles", "x"], "--percentiles"),
        (["--base-url", "localhost:8000"], "base_url must start with http"),
        (["--tokenizer", "/nonexistent"], "tokenizer"),
    ],
)
def test_cli_bad_arguments_name_the_field(args, message, capsys):
    assert main(["bench", "--disable-tqdm", *args]) == 2
    assert message in capsys.readouterr().err
