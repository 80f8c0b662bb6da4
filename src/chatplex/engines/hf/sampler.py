"""Logits -> next tokens, with each row's own settings inside one batch.

Order, per row: logit bias, penalties, token suppression, the grammar's allowed-token mask (structured output:
tokens it forbids get -inf), then greedy argmax or temperature / top-k / top-p / min-p and a draw. Logprobs are of
the raw model distribution (as vLLM and OpenAI report them), taken before any processing.

A draw is inverse-CDF sampling: one uniform number per row, looked up in the row's cumulative probabilities
(float64, so the tail keeps its mass). It equals multinomial sampling and lets a seeded row use its own generator.
The exponential race it replaced (argmax of p / q, q ~ Exp(1) drawn per vocabulary entry) cost 5.9 ms a step for 8
rows of a 49k vocabulary on a 2-core CPU, in drawing the random numbers; this costs ~0.3 ms.

`sample_async` leaves the result on the device: its `tokens` feed the next step's inputs directly, and the copy to
the host overlaps the next step (async scheduling, steps.py). Every host -> device copy here is non-blocking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chatplex.engines.hf.transfer import D2H, h2d
from chatplex.types import SamplingParams


@dataclass
class SamplingRow:
    params: SamplingParams
    token_ids: list[int]  # prompt + output so far
    prompt_len: int
    generator: torch.Generator | None = None
    suppress_ids: tuple[int, ...] = ()  # e.g. EOS before min_new_tokens
    allowed: torch.Tensor | None = None  # bool [vocab] from the row's grammar; None = unconstrained


@dataclass
class SampleOutput:
    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]]]


def _apply_bias_and_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    dev = logits.device
    for i, row in enumerate(rows):
        p = row.params
        if p.logit_bias:
            ids = h2d([t for t, _ in p.logit_bias], torch.long, dev)
            logits[i].index_add_(0, ids, h2d([b for _, b in p.logit_bias], logits.dtype, dev))
        if p.repetition_penalty != 1.0:
            seen = h2d(sorted(set(row.token_ids)), torch.long, dev)
            vals = logits[i, seen]
            logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.presence_penalty or p.frequency_penalty:
            out = row.token_ids[row.prompt_len :]
            if out:
                ids, counts = h2d(out, torch.long, dev).unique(return_counts=True)
                logits[i, ids] -= p.presence_penalty + p.frequency_penalty * counts.to(logits.dtype)
        if row.suppress_ids:
            logits[i].index_fill_(0, h2d(list(row.suppress_ids), torch.long, dev), float("-inf"))
        if row.allowed is not None:
            _apply_mask(logits[i], row.allowed.to(logits.device, non_blocking=True))


def _apply_mask(logits: torch.Tensor, allowed: torch.Tensor) -> None:
    """-inf for tokens the grammar forbids; the logits may be wider than the mask (padded vocabularies)."""
    width = min(logits.shape[-1], allowed.shape[-1])
    logits[:width].masked_fill_(~allowed[:width], float("-inf"))
    logits[width:] = float("-inf")


def _filter(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Mask to -inf what top-k, top-p and min-p exclude ([rows, vocab], per-row settings).

    Which filters run is decided from the host-side settings, so no step waits on the device to find out.
    """
    vocab = logits.shape[-1]
    dev = logits.device
    top_ks = [min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params]
    if min(top_ks) < vocab:
        k = h2d(top_ks, torch.long, dev)
        kth = logits.topk(max(top_ks), dim=-1).values.gather(-1, (k - 1)[:, None])
        logits = logits.masked_fill(logits < kth, float("-inf"))
    limited = [i for i, p in enumerate(params) if p.top_p < 1.0]
    if limited:  # rows at 1.0 keep every token: left out, not filtered at a limit that rounding could cross
        top_p = h2d([params[i].top_p for i in limited], logits.dtype, dev)
        if len(limited) == len(params):
            logits = _top_p(logits, top_p)
        else:
            index = h2d(limited, torch.long, dev)
            logits = logits.index_copy(0, index, _top_p(logits[index], top_p))
    if any(p.min_p > 0 for p in params):
        min_p = h2d([p.min_p for p in params], logits.dtype, dev)
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < probs.max(dim=-1, keepdim=True).values * min_p[:, None], float("-inf"))
    return logits


def _top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """-inf outside each row's nucleus: the most likely tokens until their probabilities add up to its top_p."""
    sorted_logits, order, probs = _nucleus_candidates(logits, top_p)
    drop = (probs.cumsum(dim=-1) - probs) > top_p[:, None]  # keeps at least the top token
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, sorted_logits)


def _nucleus_candidates(logits: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits top-p must look at, sorted high to low, their token ids and their probabilities (over the whole
    vocabulary).

    On a GPU, every token (a sort there is cheap, and counting candidates would make the host wait). On a CPU, only
    the tokens of probability at least (1 - top_p) / vocab: sorting the whole vocabulary took ~0.5-3 ms a token
    (SmolLM2's 49k, 2 cores), and none of the others can be in the nucleus: all of them together hold less than
    1 - top_p, so the tokens above any one of them hold more than top_p. A partial sort (topk) of the candidates
    costs a fraction of the full one."""
    if logits.device.type != "cpu":
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        return sorted_logits, order, sorted_logits.softmax(dim=-1)
    probs = logits.softmax(dim=-1)
    candidates = int((probs >= ((1 - top_p) / logits.shape[-1])[:, None]).sum(dim=-1).max())
    sorted_logits, order = logits.topk(max(candidates, 1), dim=-1)
    return sorted_logits, order, probs.gather(-1, order)


class PendingSample:
    """One step's sampled tokens, still on the device. `tokens` ([rows] long) may feed the next step before the
    host has seen them; `result()` waits for the background copy and returns the host lists."""

    def __init__(self, tokens: torch.Tensor, n_top: list[int | None], chosen=None, top_vals=None, top_ids=None):
        self.tokens = tokens
        self._n_top = n_top
        parts = (
            [tokens] + ([chosen] if chosen is not None else []) + ([top_vals, top_ids] if top_ids is not None else [])
        )
        self._copy = D2H(*parts)
        self._result: SampleOutput | None = None

    def result(self) -> SampleOutput:
        if self._result is not None:
            return self._result
        host = self._copy.get()
        token_list = host[0].tolist()
        rows = len(token_list)
        logprobs: list[float | None] = [None] * rows
        tops: list[list[tuple[int, float]]] = [[] for _ in range(rows)]
        if len(host) > 1:
            chosen = host[1].tolist()
            top_vals, top_ids = (host[2].tolist(), host[3].tolist()) if len(host) > 2 else (None, None)
            for i, n in enumerate(self._n_top):
                if n is None:
                    continue
                logprobs[i] = chosen[i]
                if n and top_ids is not None and top_vals is not None:
                    tops[i] = list(zip(top_ids[i][:n], top_vals[i][:n]))
        self._result = SampleOutput(token_list, logprobs, tops)
        return self._result


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> SampleOutput:
    """Pick one token per row of `logits` ([rows, vocab]); waits for the result."""
    return sample_async(logits, rows).result()


def sample_async(logits: torch.Tensor, rows: list[SamplingRow]) -> PendingSample:
    """Pick one token per row of `logits` ([rows, vocab]) without waiting for the device."""
    logits = logits.float()
    n_top = [r.params.logprobs for r in rows]
    sampled: list[int] = []
    wants_logprobs = processed = False
    for i, r in enumerate(rows):  # one pass over the rows: this runs every step for every sequence
        p = r.params
        if not p.greedy:
            sampled.append(i)
        if p.logprobs is not None:
            wants_logprobs = True
        if p.logit_bias or p.needs_penalties or r.suppress_ids or r.allowed is not None:
            processed = True
    raw = torch.log_softmax(logits, dim=-1) if wants_logprobs else None
    if processed:
        logits = logits.clone()
        _apply_bias_and_penalties(logits, rows)
    # Greedy rows take the argmax (skipped when every row draws: it is a pass over the whole vocabulary).
    tokens = logits.argmax(dim=-1) if len(sampled) < len(rows) else None
    if sampled:
        dev = logits.device
        index = None if len(sampled) == len(rows) else h2d(sampled, torch.long, dev)
        sub = logits if index is None else logits.index_select(0, index)
        sub = sub / h2d([rows[i].params.temperature for i in sampled], sub.dtype, dev)[:, None]
        sub = _filter(sub, [rows[i].params for i in sampled])
        cdf = sub.softmax(dim=-1).double().cumsum_(dim=-1)
        uniform = torch.rand(len(sampled), 1, dtype=cdf.dtype, device=dev)
        for j, i in enumerate(sampled):
            if rows[i].generator is not None:  # seeded rows draw from their own generator
                uniform[j] = torch.rand(1, dtype=cdf.dtype, device=dev, generator=rows[i].generator)
        # The first token whose cumulative probability exceeds u * total: a token of probability 0 never is. u < 1,
        # but u * total can round up to total: kept just below it, it lands on the last token that has probability.
        total = cdf[:, -1:]
        target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
        drawn = torch.searchsorted(cdf, target, right=True)[:, 0]
        tokens = drawn if index is None or tokens is None else tokens.index_copy(0, index, drawn)
    assert tokens is not None  # argmax when a row is greedy, else the draws
    if raw is None:
        return PendingSample(tokens, n_top)
    chosen = raw.gather(-1, tokens[:, None])[:, 0]
    k = max(n or 0 for n in n_top)
    top_vals, top_ids = raw.topk(k, dim=-1) if k else (None, None)
    return PendingSample(tokens, n_top, chosen, top_vals, top_ids)
