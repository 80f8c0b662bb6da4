"""The sampler on hand-made logits: each row keeps its own settings inside one batch."""

from __future__ import annotations

import math

import pytest
import torch

from chatplex.engines.hf.sampler import SamplingRow, sample
from chatplex.types import SamplingParams


def row(tokens=(), prompt_len=0, seed=None, suppress=(), **kw) -> SamplingRow:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return SamplingRow(SamplingParams(**kw), list(tokens), prompt_len, gen, tuple(suppress))


LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.5], [4.0, 1.0, 0.0, 3.5]])


def test_greedy_rows_take_the_argmax():
    out = sample(LOGITS, [row(temperature=0.0), row(temperature=0.0)])
    assert out.token_ids == [1, 0]


def test_top_k_one_is_greedy_even_when_sampling():
    for seed in range(5):
        out = sample(LOGITS, [row(temperature=1.0, top_k=1, seed=seed), row(temperature=5.0, top_k=1, seed=seed)])
        assert out.token_ids == [1, 0]


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([[10.0, 9.0, 0.0, -5.0]])  # p ~ [0.73, 0.27, ~0, ~0]
    seen = {sample(logits, [row(temperature=1.0, top_p=0.5, seed=s)]).token_ids[0] for s in range(30)}
    assert seen == {0}
    seen = {sample(logits, [row(temperature=1.0, top_p=0.9, seed=s)]).token_ids[0] for s in range(60)}
    assert seen == {0, 1}


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99, 0.999])
def test_top_p_over_candidates_keeps_what_a_full_sort_keeps(top_p, monkeypatch):
    """On a CPU top-p sorts only the tokens that can be in the nucleus: the same tokens stay as when the whole
    vocabulary is sorted (rows peaked, flat and in between), and a row at top_p 1.0 beside them keeps every token."""
    from chatplex.engines.hf import sampler

    generator = torch.Generator().manual_seed(int(top_p * 1000))
    logits = torch.randn(4, 49152, generator=generator) * torch.tensor([[8.0], [2.0], [0.3], [1.0]])
    params = [SamplingParams(temperature=1.0, top_p=p) for p in (top_p, top_p, top_p, 1.0)]
    sorted_widths = []

    def candidates(rows, limits):  # what top-p sorted: the three limited rows, not the whole vocabulary
        found = nucleus_candidates(rows, limits)
        sorted_widths.append((rows.shape[0], found[0].shape[-1]))
        return found

    nucleus_candidates = sampler._nucleus_candidates
    monkeypatch.setattr(sampler, "_nucleus_candidates", candidates)
    got = sampler._filter(logits.clone(), params)
    [(rows, width)] = sorted_widths
    assert rows == 3 and width <= 49152
    kept = got > float("-inf")
    assert torch.equal(got[kept], logits[kept])
    assert kept[3].all()
    # the whole vocabulary sorted, as the GPU path does
    sorted_logits, order = logits[:3].sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs
    want = torch.zeros_like(order, dtype=torch.bool).scatter_(-1, order, mass_above <= top_p)
    # The same tokens, but for one at the nucleus's edge, where the two ways of summing the probabilities round
    # differently: the mass above it within float32 rounding of top_p.
    differ = kept[:3] != want
    assert differ.sum(dim=-1).max() <= 1
    edge = torch.zeros_like(probs).scatter_(-1, order, mass_above)[differ]
    assert ((edge - top_p).abs() < 1e-4).all()
    # and a peaked row alone sorts a few of the vocabulary's tokens, not all
    peaked = nucleus_candidates(logits[:1], torch.tensor([top_p]))[0].shape[-1]
    assert want[0].sum() <= peaked < 49152
    assert want[0].sum() < want[2].sum()


def test_min_p_drops_unlikely_tokens():
    logits = torch.tensor([[2.0, 1.9, -3.0, -3.0]])
    seen = {sample(logits, [row(temperature=1.0, min_p=0.1, seed=s)]).token_ids[0] for s in range(60)}
    assert seen == {0, 1}


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    g = torch.Generator().manual_seed(0)
    counts = [0, 0, 0]
    for _ in range(3000):
        counts[sample(logits, [SamplingRow(SamplingParams(temperature=1.0), [], 0, g)]).token_ids[0]] += 1
    assert counts[0] / 3000 == pytest.approx(0.6, abs=0.04)
    assert counts[2] / 3000 == pytest.approx(0.1, abs=0.03)


def test_seeded_rows_repeat_and_do_not_disturb_each_other():
    logits = torch.zeros(3, 50)
    a = sample(logits, [row(temperature=1.0, seed=1), row(temperature=1.0, seed=2), row(temperature=1.0, seed=1)])
    b = sample(logits, [row(temperature=1.0, seed=1), row(temperature=1.0, seed=2), row(temperature=1.0, seed=1)])
    assert a.token_ids == b.token_ids
    assert a.token_ids[0] == a.token_ids[2]


def test_repetition_penalty_follows_transformers_semantics():
    logits = torch.tensor([[2.0, 1.9, -1.0, -1.05]])
    # token 0 seen: 2.0 / 2 = 1.0 < 1.9 -> 1 wins; token 2 seen: -1 * 2 = -2 < -1.05
    assert sample(logits, [row(tokens=[0, 2], temperature=0.0, repetition_penalty=2.0)]).token_ids == [1]


def test_presence_and_frequency_penalties_count_output_tokens_only():
    logits = torch.tensor([[2.0, 1.5, 0.0]])
    # prompt token 0 is not penalised by presence/frequency; output tokens [1] is
    assert sample(logits, [row(tokens=[0, 1], prompt_len=1, temperature=0.0, presence_penalty=1.0)]).token_ids == [0]
    # output has token 0 twice: 2.0 - 2 * 0.5 = 1.0 < 1.5
    assert sample(logits, [row(tokens=[0, 0], prompt_len=0, temperature=0.0, frequency_penalty=0.5)]).token_ids == [1]


def test_logit_bias_and_suppression():
    assert sample(LOGITS[:1], [row(temperature=0.0, logit_bias=((3, 100.0),))]).token_ids == [3]
    assert sample(LOGITS[:1], [row(temperature=0.0, suppress=[1])]).token_ids == [2]


def test_logprobs_are_raw_and_top_alternatives_sorted():
    out = sample(LOGITS, [row(temperature=0.0, logprobs=2), row(temperature=0.0)])
    raw = torch.log_softmax(LOGITS[0], -1)
    assert out.logprobs[0] == pytest.approx(float(raw[1]))
    assert [t for t, _ in out.top_logprobs[0]] == [1, 2]
    assert out.logprobs[1] is None and out.top_logprobs[1] == []
    assert math.isclose(sum(math.exp(v) for v in raw.tolist()), 1.0, rel_tol=1e-6)
