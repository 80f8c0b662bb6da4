"""`chatplex serve --engine-process`: the Hugging Face engine in a process of its own behind the HTTP server.
Real server, real openai client; the engine process is killed to see the server fail loudly instead of hanging."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from tests.server.conftest import ServerProcess


def engine_pid(server_pid: int) -> int:
    with open(f"/proc/{server_pid}/task/{server_pid}/children") as f:
        children = [int(pid) for pid in f.read().split()]
    [pid] = [p for p in children if b"chatplex.engines.process.child" in open(f"/proc/{p}/cmdline", "rb").read()]
    return pid


def test_serves_through_the_engine_process_and_exits_1_when_it_dies(tmp_path, tiny_model_dir):
    srv = ServerProcess(["--model", tiny_model_dir, "--engine-process", "--served-model-name", "x"],
                        tmp_path / "server.log").wait_ready()
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "Hello there, how are you?"}]
        whole = client.chat.completions.create(model="x", messages=messages, temperature=0, max_tokens=8)
        chunks = list(client.chat.completions.create(model="x", messages=messages, temperature=0, max_tokens=8,
                                                     stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
        assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the engine's prefix cache, across the wire
        assert "chatplex:prefix_cache_hits_total" in httpx.get(f"{srv.url}/metrics").text
        engine = engine_pid(srv.proc.pid)

        body = {"model": "x", "messages": messages, "max_tokens": 400, "ignore_eos": True, "stream": True}
        events = []
        with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:
                        os.kill(engine, signal.SIGKILL)
        error = json.loads(events[-2])["error"]
        assert "engine process stopped" in error["message"] and events[-1] == "[DONE]"
        assert srv.proc.wait(timeout=30) == 1  # for a supervisor to restart it
        assert "the engine process died" in srv.log()
    finally:
        srv.stop()


def test_sigterm_drains_through_the_engine_process(tmp_path, tiny_model_dir):
    """SIGTERM goes to the server; the engine process ignores it and serves the requests in flight until the
    frontend closes it, then the server exits 0."""
    srv = ServerProcess(["--model", tiny_model_dir, "--engine-process", "--served-model-name", "x"], tmp_path / "server.log").wait_ready()
    try:
        engine = engine_pid(srv.proc.pid)
        body = {"model": "x", "prompt": "Once", "max_tokens": 60, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            srv.proc.send_signal(signal.SIGTERM)
            os.kill(engine, signal.SIGTERM)  # as a process-group signal (systemd, ^C) would reach it
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and not any('"error"' in line for line in rest)
        assert srv.proc.wait(timeout=30) == 0
        for _ in range(50):
            if not os.path.exists(f"/proc/{engine}") or open(f"/proc/{engine}/stat").read().split()[2] == "Z":
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the engine process outlived its server")
    finally:
        srv.stop()


# Loaded by every Python process of the test server (PYTHONPATH): the frontend notes, as it starts importing its
# HTTP stack, whether its engine process is already running.
WATCH_IMPORTS = '''
import os, sys

class _FirstFastapiImport:
    def find_spec(self, name, path=None, target=None):
        if name == "fastapi":
            sys.meta_path.remove(self)
            pid = os.getpid()
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
            engine = any(b"chatplex.engines.process.child" in open(f"/proc/{c}/cmdline", "rb").read() for c in children)
            with open(os.environ["WATCH_OUT"], "w") as f:
                f.write(f"engine process running: {engine}")
        return None

if "chatplex.cli.main" in sys.orig_argv:
    sys.meta_path.insert(0, _FirstFastapiImport())
'''


def test_the_engine_process_starts_before_the_frontend_imports_its_http_stack(tmp_path, tiny_model_dir):
    """So its own imports (torch, transformers, the engine: seconds on a GPU host) run while the frontend imports
    FastAPI, uvicorn and torch."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(WATCH_IMPORTS)
    # The server's own temporary folder (short: a Unix socket's path has ~100 bytes), to see what it leaves there.
    temp = Path(tempfile.mkdtemp(prefix="cx"))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           "WATCH_OUT": str(tmp_path / "watch.txt"), "TMPDIR": str(temp)}
    srv = ServerProcess(["--model", tiny_model_dir, "--engine-process", "--served-model-name", "x"],
                        tmp_path / "server.log", env=env).wait_ready()
    try:
        assert (tmp_path / "watch.txt").read_text() == "engine process running: True"
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=60)
        assert client.completions.create(model="x", prompt="Once", max_tokens=4).usage.completion_tokens == 4
    finally:
        srv.stop()
    assert not list(temp.glob("chatplex-*"))  # no socket folder left behind


def test_a_server_that_cannot_start_stops_its_engine_process(tmp_path, tiny_model_dir):
    """The engine process starts before the server binds its port: a port in use ends both, leaving nothing."""
    temp = Path(tempfile.mkdtemp(prefix="cx"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "chatplex.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--model", tiny_model_dir, "--engine-process"],
            env={**os.environ, "TMPDIR": str(temp)}, capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode != 0
    for _ in range(50):  # the engine process is killed, or exits when its parent is gone
        if not list(temp.glob("chatplex-*")) and b"chatplex.engines.process.child" not in subprocess.run(
                ["ps", "-eo", "args"], capture_output=True).stdout:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"left behind: {list(temp.iterdir())}")


def test_serve_asks_the_driver_for_a_gpu_without_importing_torch():
    code = ("import sys; from chatplex.cli.serve import _has_gpu; from chatplex.config import load_args; "
            "has = _has_gpu(load_args({})); print(has, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"
    import torch

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:  # no NVIDIA driver (this CPU machine)
        assert out[0] == "False"
    else:
        if torch.version.cuda:  # a CUDA build of torch sees what the driver sees
            assert out[0] == str(torch.cuda.is_available())
