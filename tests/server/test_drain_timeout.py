"""SIGTERM when in-flight requests outlast `--drain-timeout`: the process exits 0 within the timeout plus a second,
each request left is aborted in the engine and its client gets an ended exchange (a 503 for a non-streaming one,
a closed stream for a streaming one), never a hang or a reset. An orphan (a non-streaming client that has gone) is
aborted at once and does not hold the drain up."""

from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.server.conftest import running_server
from tests.server.load_helpers import LONG, OpenStream, metric, send_raw, wait_for

DRAIN_TIMEOUT = 3.0


def test_sigterm_exits_within_the_drain_timeout_whatever_is_in_flight(tiny_model_dir, tmp_path):
    endless = LONG  # 8000 tokens: far longer than the drain timeout on this model
    with running_server(
        ["--model", tiny_model_dir, "--infer-dtype", "float32", "--set", "max_num_seqs=4",
         "--drain-timeout", str(DRAIN_TIMEOUT)],
        tmp_path / "server.log",
    ) as srv, httpx.Client(base_url=srv.url, timeout=60) as client, ThreadPoolExecutor(2) as pool:
        url = srv.url
        orphan = send_raw(url, {**endless, "stream": False})
        waiting = pool.submit(client.post, "/v1/completions", json={**endless, "stream": False})
        stream = OpenStream(client, endless)
        assert wait_for(lambda: metric(url, "chatplex:num_requests_running") == 3)
        aborted = metric(url, "chatplex:aborted_requests_total")
        orphan.close()
        assert wait_for(lambda: metric(url, "chatplex:aborted_requests_total") == aborted + 1)

        signalled = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(timeout=60)
        took = time.monotonic() - signalled
        assert code == 0, srv.log()
        # The bound (a limit the server promises, not a speed measurement).
        assert took < DRAIN_TIMEOUT + 1.0, f"exit took {took:.1f} s\n{srv.log()}"

        stopped = waiting.result(timeout=10)
        assert stopped.status_code == 503 and stopped.json()["error"]["code"] == "draining"
        stream.events()  # the stream ends (no reset, no hang); it was cut short, so no finish_reason is promised
        stream.close()
        assert "Traceback" not in srv.log() and "CancelledError" not in srv.log(), srv.log()
    # Nothing listens on the port any more (SO_REUSEADDR: closed connections may sit in TIME_WAIT, as any server's).
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", srv.port))
