"""Async scheduling (step N+1 launched before step N's tokens reach the host) emits exactly what the one-step-at-a-
time loop emits: the same text, tokens, logprobs and finish per sequence, no token past a stop token, a stop string, max_new_tokens or an abort."""

from __future__ import annotations

import asyncio

import pytest

from chatplex import ChatModel

PROMPTS = ["Hi", "The quick brown fox jumps over the lazy dog", "One two three", "x y z " * 8]


def load(tiny_model_dir, **settings) -> ChatModel:
    # Few tokens of budget per step: prefill chunks run beside decodes, so steps mix pending and known tokens.
    # async_scheduling: true overlaps steps on a CPU too (its default there is false), so the path is tested here.
    return ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32",
                      "max_num_batched_tokens": 16, "kv_block_size": 4, "async_scheduling": True, **settings})


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    with load(tiny_model_dir) as m:
        yield m


@pytest.fixture(scope="module")
def sync_model(tiny_model_dir):
    with load(tiny_model_dir, async_scheduling=False) as m:
        yield m


def run_all(model: ChatModel, requests: list) -> list[list[tuple]]:
    """Per request, each sequence's output as (index, text, tokens, completion tokens, finish reason, stop reason,
    logprobs). Its deltas are folded: a caller that falls behind gets several steps as one (engines/relay.py), so
    where deltas split is a matter of timing, not of output."""

    async def one(request) -> list[tuple]:
        seqs: dict[int, list] = {}
        async for d in model.agenerate(request):
            seq = seqs.setdefault(d.index, [d.index, "", (), 0, None, None, ()])
            seq[1] += d.text
            seq[2] += tuple(d.token_ids)
            seq[3:6] = d.completion_tokens, d.finish_reason, d.stop_reason
            seq[6] += tuple((lp.token_id, round(lp.logprob, 4)) for lp in d.logprobs or ())
        return [tuple(seq) for seq in seqs.values()]

    async def main():
        return await asyncio.gather(*(one(r) for r in requests))

    return model._loop.run(main())


def idle(engine) -> bool:
    return not engine.scheduler.has_work and engine.core.steps.inflight is None


def build(model: ChatModel, prompt: str, **kw):
    return model.build_request(prompt=prompt, **{"do_sample": False, "max_new_tokens": 12, "ignore_eos": True, **kw})


def tokens_of(deltas: list[tuple]) -> list[int]:
    return [t for d in deltas for t in d[2]]


def test_async_equals_sync_for_mixed_requests(model, sync_model):
    plain = run_all(sync_model, [build(model, p) for p in PROMPTS])
    # Stop on a token / a stop string that greedy decoding reaches mid-way, and max_new_tokens of 1 and 3.
    stop_token = tokens_of(plain[1])[4]
    text0 = "".join(d[1] for d in plain[0])
    stop_text = text0[len(text0) // 2 : len(text0) // 2 + 3]
    requests = [
        build(model, PROMPTS[0], stop=[stop_text]),
        build(model, PROMPTS[1], stop_token_ids=[stop_token]),
        build(model, PROMPTS[2], max_new_tokens=1),
        build(model, PROMPTS[3], max_new_tokens=3),
        build(model, PROMPTS[2], do_sample=True, temperature=0.9, seed=7, n=2),
        build(model, PROMPTS[3], do_sample=True, top_p=0.8, seed=3, logprobs=True, top_logprobs=2),
    ]
    sync_out = run_all(sync_model, requests)
    async_out = run_all(model, requests)
    assert async_out == sync_out
    assert tokens_of(async_out[1])[-1] == stop_token and stop_token not in tokens_of(async_out[1])[:-1]
    assert async_out[0][-1][4] == "stop" and stop_text not in "".join(d[1] for d in async_out[0])
    assert len(tokens_of(async_out[2])) == 1 and len(tokens_of(async_out[3])) == 3
    assert idle(model.engine)


def test_async_overlaps_steps_and_counts_only_emitted_tokens(model, sync_model):
    for m in (model, sync_model):
        before = m.stats()
        out = run_all(m, [build(m, p, max_new_tokens=5) for p in PROMPTS])
        after = m.stats()
        assert all(len(tokens_of(d)) == 5 for d in out)
        assert after.generated_tokens - before.generated_tokens == 5 * len(PROMPTS)  # lookahead tokens are dropped
        overlapped = after.overlapped_steps - before.overlapped_steps
        if m is model:
            assert overlapped > 0, after  # steps ran while others were in flight
        else:
            assert overlapped == 0, after  # and never without async scheduling


def test_abort_mid_stream_frees_everything(model):
    async def main():
        gen = model.agenerate(build(model, PROMPTS[1], max_new_tokens=50))
        got = 0
        async for d in gen:
            got += len(d.token_ids)
            if got >= 3:
                break
        await gen.aclose()
        # The engine keeps serving after the abort.
        return [d async for d in model.agenerate(build(model, PROMPTS[0], max_new_tokens=4))]

    deltas = model._loop.run(main())
    assert sum(len(d.token_ids) for d in deltas) == 4
    engine = model.engine
    for _ in range(100):
        if idle(engine):
            break
        model._loop.run(asyncio.sleep(0.02))
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_padded_eager_steps_change_nothing(model, tiny_model_dir):
    """Eager steps padded to a multiple of 16 tokens (as on a GPU, where it keeps matrix shapes few) emit the
    same output as unpadded ones."""
    requests = [build(model, p) for p in PROMPTS]
    plain = run_all(model, requests)
    with load(tiny_model_dir, pad_tokens_to=16) as padded_model:
        assert padded_model.engine.runner.pad_tokens_to == 16
        padded = run_all(padded_model, requests)
    assert padded == plain
