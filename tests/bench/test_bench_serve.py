"""`chatplex bench` against a real `chatplex serve` with the embedded SmolLM2 model, on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from chatplex.cli.main import main

pytestmark = pytest.mark.slow

if not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", "src", "chatplex", "cli", "serve.py")):
    pytest.skip("chatplex serve is not built in this checkout", allow_module_level=True)


@pytest.fixture(scope="module")
def serve_url(tmp_path_factory) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w+")
    cmd = [sys.executable, "-m", "chatplex.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--infer-dtype", "float32", "--max-model-len", "512"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"chatplex serve did not come up:\n{log.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield f"{url}/v1"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


def test_bench_chat_against_chatplex_serve(serve_url, smollm_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main([
        "bench", "--base-url", serve_url, "--num-prompts", "4", "--input-len", "16", "--output-len", "8",
        "--tokenizer", smollm_dir, "--max-concurrency", "2", "--result-json", str(out), "--disable-tqdm",
    ])
    assert code == 0, capsys.readouterr()
    data = json.loads(out.read_text())
    s = data["summary"]
    assert (s["completed"], s["failed"]) == (4, 0)
    assert s["total_output_tokens"] == 4 * 8  # ignore_eos honoured: exactly max_tokens each
    assert s["total_input_tokens"] > 4 * 16  # the chat template's tokens come on top of the prompt's
    assert data["model"] and s["ttft"]["mean"] > 0 and s["max_concurrent_requests"] <= 2
    assert all(len(r["chunk_offsets"]) >= 1 for r in data["requests"])


def test_bench_completions_prompt_tokens_match_the_servers_count(serve_url, smollm_dir, tmp_path):
    out = tmp_path / "r.json"
    code = main([
        "bench", "--base-url", serve_url, "--endpoint", "completions", "--num-prompts", "3", "--input-len", "20",
        "--range-ratio", "0.5", "--output-len", "4", "--tokenizer", smollm_dir, "--result-json", str(out),
        "--disable-tqdm",
    ])
    assert code == 0
    data = json.loads(out.read_text())
    from transformers import AutoTokenizer

    from chatplex.bench import random_prompts

    prompts = random_prompts(3, 20, 4, 0.5, 0, AutoTokenizer.from_pretrained(smollm_dir))
    # the server's usage (raw completions: no template) counts exactly what the client built
    assert [r["prompt_tokens"] for r in data["requests"]] == [p.prompt_tokens for p in prompts]
    assert [r["output_tokens"] for r in data["requests"]] == [p.output_len for p in prompts]
