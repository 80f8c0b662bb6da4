"""Logits -> next tokens, with each row's own settings inside one batch.

Order, per row: logit bias, penalties, token suppression, the grammar's allowed-token mask (structured output:
tokens it forbids get -inf), then greedy argmax or temperature / top-k / top-p /
min-p and a draw. Draws use the exponential-race form (argmax of p / q with q ~ Exp(1)), which equals
multinomial sampling and lets a seeded row use its own generator. Logprobs are of the raw model distribution
(as vLLM and OpenAI report them), taken before any processing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    for i, row in enumerate(rows):
        p = row.params
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], device=logits.device)
            logits[i].index_add_(0, ids, torch.tensor([b for _, b in p.logit_bias], device=logits.device))
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(row.token_ids)), device=logits.device)
            vals = logits[i, seen]
            logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.presence_penalty or p.frequency_penalty:
            out = row.token_ids[row.prompt_len :]
            if out:
                ids, counts = torch.tensor(out, device=logits.device).unique(return_counts=True)
                logits[i, ids] -= p.presence_penalty + p.frequency_penalty * counts.to(logits.dtype)
        if row.suppress_ids:
            logits[i, list(row.suppress_ids)] = float("-inf")
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
        k = torch.tensor(top_ks, device=dev)
        kth = logits.topk(max(top_ks), dim=-1).values.gather(-1, (k - 1)[:, None])
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        top_p = torch.tensor([p.top_p for p in params], device=dev)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) > top_p[:, None]  # keeps at least the top token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    if any(p.min_p > 0 for p in params):
        min_p = torch.tensor([p.min_p for p in params], device=dev)
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < probs.max(dim=-1, keepdim=True).values * min_p[:, None], float("-inf"))
    return logits


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> SampleOutput:
    """Pick one token per row of `logits` ([rows, vocab])."""
    logits = logits.float()
    n_top = [r.params.logprobs for r in rows]
    raw = torch.log_softmax(logits, dim=-1) if any(n is not None for n in n_top) else None
    if any(r.params.logit_bias or r.params.needs_penalties or r.suppress_ids or r.allowed is not None for r in rows):
        logits = logits.clone()
        _apply_bias_and_penalties(logits, rows)
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        dev = logits.device
        sub = logits[sampled] / torch.tensor([rows[i].params.temperature for i in sampled], device=dev)[:, None]
        sub = _filter(sub, [rows[i].params for i in sampled])
        probs = sub.softmax(dim=-1)
        race = torch.empty_like(probs).exponential_()
        for j, i in enumerate(sampled):
            if rows[i].generator is not None:  # seeded rows draw from their own generator
                race[j].exponential_(generator=rows[i].generator)
        tokens[sampled] = (probs / race).argmax(dim=-1)
    if tokens.is_cuda:
        # Wait on an event (which lets go of the GIL) rather than inside tolist (which holds it), so the event
        # loop thread can deliver the previous step's text while the GPU works.
        done = torch.cuda.Event()
        done.record()
        done.synchronize()
    token_list = tokens.tolist()
    logprobs: list[float | None] = [None] * len(rows)
    tops: list[list[tuple[int, float]]] = [[] for _ in rows]
    if raw is not None:
        chosen = raw.gather(-1, tokens[:, None])[:, 0].tolist()
        k = max(n or 0 for n in n_top)
        top_vals, top_ids = raw.topk(k, dim=-1) if k else (None, None)
        for i, n in enumerate(n_top):
            if n is None:
                continue
            logprobs[i] = chosen[i]
            if n:
                tops[i] = list(zip(top_ids[i, :n].tolist(), top_vals[i, :n].tolist()))
    return SampleOutput(token_list, logprobs, tops)
