"""Backpressure (429), client disconnects (abort) and SIGTERM drain, on a tiny random-weight model.

One request slot (`max_num_seqs=1`) and one queue slot: two open streams fill the server deterministically.
The drain test stops the server, so it runs last.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.server.conftest import running_server
from tests.server.load_helpers import LONG, OpenStream, metric, send_raw, wait_for


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("tiny-server") / "server.log"
    with running_server(
        ["--model", tiny_model_dir, "--infer-dtype", "float32", "--max-queued-requests", "1", "--set", "max_num_seqs=1",
         "--drain-timeout", "120"],
        log,
    ) as srv:
        yield srv


def test_full_queue_gets_429_with_retry_after_and_server_stays_healthy(tiny_server):
    url = tiny_server.url
    with httpx.Client(base_url=url, timeout=120) as a, httpx.Client(base_url=url, timeout=120) as b, ThreadPoolExecutor(6) as pool:
        running = OpenStream(a, LONG)
        # A waiting request gets its response headers only once it is scheduled, so open it in the background.
        waiting = pool.submit(OpenStream, b, LONG)
        try:
            assert wait_for(lambda: metric(url, "chatplex:num_requests_waiting") == 1)

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
    assert wait_for(lambda: metric(url, "chatplex:num_requests_running") == 0)
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_client_disconnect_aborts_generation(tiny_server):
    url = tiny_server.url
    before = metric(url, "chatplex:aborted_requests_total")
    with httpx.Client(base_url=url, timeout=60) as c:
        stream = OpenStream(c, LONG)
        assert metric(url, "chatplex:num_requests_running") == 1
        stream.close()
    assert wait_for(lambda: metric(url, "chatplex:aborted_requests_total") == before + 1)
    assert wait_for(lambda: metric(url, "chatplex:num_requests_running") == 0)


def test_non_streaming_client_disconnect_aborts_within_a_second(tiny_server):
    url = tiny_server.url
    before = metric(url, "chatplex:aborted_requests_total")
    sock = send_raw(url, {**LONG, "stream": False})
    assert wait_for(lambda: metric(url, "chatplex:num_requests_running") == 1)
    sock.close()
    # The bound: the departed client's request is aborted (and its slot freed) within a second.
    assert wait_for(lambda: metric(url, "chatplex:aborted_requests_total") == before + 1, timeout=1.0)
    assert wait_for(lambda: metric(url, "chatplex:num_requests_running") == 0)
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200


def test_sigterm_drains_in_flight_requests_then_exits_0(tiny_server):
    url = tiny_server.url
    body = {**LONG, "max_tokens": 2000}  # long enough to outlast the checks below, short enough to wait for
    with httpx.Client(base_url=url, timeout=120) as c:
        stream = OpenStream(c, body)
        tiny_server.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: httpx.get(f"{url}/health").status_code == 503)
        assert httpx.get(f"{url}/health").json() == {"status": "draining"}
        refused = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        events = stream.events()
        stream.close()
    finals = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert [f["finish_reason"] for f in finals] == ["length"]
    assert tiny_server.proc.wait(timeout=60) == 0, tiny_server.log()
