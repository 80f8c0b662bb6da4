"""Backpressure (429), client disconnects (abort) and SIGTERM drain, on a tiny random-weight model.

One request slot (`max_num_seqs=1`) and one queue slot: two open streams fill the server deterministically.
The drain test stops the server, so it runs last.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.server.conftest import running_server

LONG = {"prompt": "Once upon a time", "max_tokens": 8000, "ignore_eos": True, "stream": True, "temperature": 0}


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("tiny-server") / "server.log"
    with running_server(
        ["--model", tiny_model_dir, "--infer-dtype", "float32", "--max-queued-requests", "1", "--set", "max_num_seqs=1",
         "--drain-timeout", "120"],
        log,
    ) as srv:
        yield srv


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class OpenStream:
    """A streaming completion held open after its first event."""

    def __init__(self, client: httpx.Client, body: dict) -> None:
        self._cm = client.stream("POST", "/v1/completions", json=body)
        self.response = self._cm.__enter__()
        assert self.response.status_code == 200, self.response.read()
        self.lines = self.response.iter_lines()
        self.first = next(line for line in self.lines if line.startswith("data: "))

    def events(self) -> list[dict]:
        out = []
        for line in self.lines:
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
        return out

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def test_full_queue_gets_429_with_retry_after_and_server_stays_healthy(tiny_server):
    url = tiny_server.url
    with httpx.Client(base_url=url, timeout=120) as a, httpx.Client(base_url=url, timeout=120) as b, ThreadPoolExecutor(6) as pool:
        running = OpenStream(a, LONG)
        # A waiting request gets its response headers only once it is scheduled, so open it in the background.
        waiting = pool.submit(OpenStream, b, LONG)
        try:
            assert _wait_for(lambda: _metric(url, "chatplex:num_requests_waiting") == 1)

            def post(_):
                return httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)

            flood = list(pool.map(post, range(12)))
            assert {r.status_code for r in flood} == {429}
            assert all(r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error" for r in flood)
            assert httpx.get(f"{url}/health").status_code == 200
            stream = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": True})
            assert stream.status_code == 429  # refused before any SSE header
        finally:
            running.close()
            waiting.result(timeout=60).close()
    assert _wait_for(lambda: _metric(url, "chatplex:num_requests_running") == 0)
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_client_disconnect_aborts_generation(tiny_server):
    url = tiny_server.url
    before = _metric(url, "chatplex:aborted_requests_total")
    with httpx.Client(base_url=url, timeout=60) as c:
        stream = OpenStream(c, LONG)
        assert _metric(url, "chatplex:num_requests_running") == 1
        stream.close()
    assert _wait_for(lambda: _metric(url, "chatplex:aborted_requests_total") == before + 1)
    assert _wait_for(lambda: _metric(url, "chatplex:num_requests_running") == 0)


def _send_raw(url: str, body: dict) -> socket.socket:
    """A non-streaming request on a bare socket, so the test can leave without reading the reply."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def test_non_streaming_client_disconnect_aborts_within_a_second(tiny_server):
    url = tiny_server.url
    before = _metric(url, "chatplex:aborted_requests_total")
    sock = _send_raw(url, {**LONG, "stream": False})
    assert _wait_for(lambda: _metric(url, "chatplex:num_requests_running") == 1)
    sock.close()
    # The bound: the departed client's request is aborted (and its slot freed) within a second.
    assert _wait_for(lambda: _metric(url, "chatplex:aborted_requests_total") == before + 1, timeout=1.0)
    assert _wait_for(lambda: _metric(url, "chatplex:num_requests_running") == 0)
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200


def test_sigterm_drains_in_flight_requests_then_exits_0(tiny_server):
    url = tiny_server.url
    body = {**LONG, "max_tokens": 2000}  # long enough to outlast the checks below, short enough to wait for
    with httpx.Client(base_url=url, timeout=120) as c:
        stream = OpenStream(c, body)
        tiny_server.proc.send_signal(signal.SIGTERM)
        assert _wait_for(lambda: httpx.get(f"{url}/health").status_code == 503)
        assert httpx.get(f"{url}/health").json() == {"status": "draining"}
        refused = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        events = stream.events()
        stream.close()
    finals = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert [f["finish_reason"] for f in finals] == ["length"]
    assert tiny_server.proc.wait(timeout=60) == 0, tiny_server.log()
