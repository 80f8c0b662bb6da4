"""`chatplex serve --api-server-count 2`: two HTTP frontend processes share the port in front of one engine
process. Real server, real openai client; the extra frontend is killed to see the server exit 1, and SIGTERM
drains every process."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.server.conftest import ServerProcess


def children(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        pids = [int(p) for p in f.read().split()]
    kinds = {}
    for p in pids:
        cmdline = open(f"/proc/{p}/cmdline", "rb").read()
        kinds["engine" if b"chatplex.engines.process.child" in cmdline else "frontend"] = p
    return kinds


def serve_two(tmp_path, tiny_model_dir) -> ServerProcess:
    srv = ServerProcess(["--model", tiny_model_dir, "--api-server-count", "2", "--served-model-name", "x"],
                        tmp_path / "server.log").wait_ready()
    deadline = time.monotonic() + 60
    while "frontend 1 ready" not in srv.log():  # the extra one has attached and serves
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.2)
    return srv


def test_two_frontends_serve_one_engine_and_a_dead_frontend_stops_the_server(tmp_path, tiny_model_dir):
    srv = serve_two(tmp_path, tiny_model_dir)
    try:
        kinds = children(srv.proc.pid)
        assert set(kinds) == {"engine", "frontend"}
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "Hello there, how are you?"}]
        one = client.chat.completions.create(model="x", messages=messages, temperature=0, max_tokens=8)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:  # new connections, spread over both frontends
            replies = list(pool.map(lambda _: openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0,
                                                            timeout=60).chat.completions.create(
                model="x", messages=messages, temperature=0, max_tokens=8), range(32)))
        assert {r.choices[0].message.content for r in replies} == {one.choices[0].message.content}
        os.kill(kinds["frontend"], signal.SIGKILL)
        assert srv.proc.wait(timeout=60) == 1  # for a supervisor to restart it
        assert "a frontend process died" in srv.log()
    finally:
        srv.stop()


def test_sigterm_drains_every_frontend(tmp_path, tiny_model_dir):
    """Streams in flight (on either frontend) finish after SIGTERM, and every process ends, with exit code 0:
    an extra frontend that is done draining before the first is not a frontend that died."""
    srv = serve_two(tmp_path, tiny_model_dir)
    try:
        kinds = children(srv.proc.pid)
        body = {"model": "x", "prompt": "Once", "max_tokens": 60, "ignore_eos": True, "stream": True}

        def stream() -> list[str]:
            with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=60) as r:
                lines = r.iter_lines()
                first = next(lines)
                all_started.wait(timeout=60)  # every stream is under way before the SIGTERM
                return [first, *(line for line in lines if line.startswith("data: "))]

        all_started = threading.Barrier(5)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            streams = [pool.submit(stream) for _ in range(4)]
            all_started.wait(timeout=60)
            srv.proc.send_signal(signal.SIGTERM)
            for done in streams:
                lines = done.result()
                assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
        assert srv.proc.wait(timeout=60) == 0, srv.log()
        for pid in kinds.values():
            for _ in range(100):
                if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"process {pid} outlived its server")
    finally:
        srv.stop()


def test_api_server_count_needs_the_engine_process(tmp_path, tiny_model_dir):
    srv = ServerProcess(["--model", tiny_model_dir, "--api-server-count", "2", "--engine-process", "false"],
                        tmp_path / "server.log")
    assert srv.proc.wait(timeout=60) != 0
    assert "api_server_count" in srv.log() and "engine_process is false" in srv.log()
