"""Per-sequence state. One request with n > 1 has n sequences."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatplex.types import FinishReason, SamplingParams

if TYPE_CHECKING:  # types only: the scheduler imports this module and must not need torch
    from chatplex.engines.hf.multimodal.base import RequestMedia
    from chatplex.engines.hf.sampler import SamplingRow
    from chatplex.engines.sequence_text import SequenceText

_seq_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    index: int
    token_ids: list[int]
    prompt_len: int
    sampling: SamplingParams
    max_new_tokens: int
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose keys/values are in the cache
    # Tokens sampled by steps still running on the device (async scheduling): they count as the sequence's
    # next positions, so the following step is scheduled before their values reach `token_ids`.
    num_pending: int = 0
    block_table: list[int] = field(default_factory=list)
    # Prefix caching (block_manager.py). cache_key: what else its keys and values depend on (adapter, media), None
    # to keep it out of the cache; cache_limit: no cached prefix may end past this position (None: any).
    cache_key: bytes | None = None
    cache_limit: int | None = None
    block_hashes: list[bytes] = field(default_factory=list)  # of its full blocks, as far as computed
    num_registered_blocks: int = 0  # its first blocks that are registered in the cache
    num_cached_tokens: int | None = None  # prompt tokens found in the cache at its first admission
    finish_reason: FinishReason | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    # Engine-side helpers, set when the request is admitted; they live here so they die with the sequence.
    adapter: str | None = None  # the LoRA adapter the request named
    media: RequestMedia | None = None  # the request's prepared media, shared by its n sequences
    generator: Any = None  # torch.Generator of a seeded request (None: the global one)
    text: SequenceText | None = None  # detokenizer and stop-string matcher
    matcher: Any = None  # the grammar matcher of a constrained request (structured output, forced tool calls)
    row: SamplingRow | None = None  # its sampling row, kept once nothing in it changes any more

    @property
    def num_tokens(self) -> int:
        """Positions the sequence has, including pending tokens not yet known on the host."""
        return len(self.token_ids) + self.num_pending

    @property
    def num_output_tokens(self) -> int:
        """Output tokens known on the host."""
        return len(self.token_ids) - self.prompt_len

    @property
    def is_draining(self) -> bool:
        """Its last token is sampled but not yet known: no further step may run for it."""
        return self.num_pending > 0 and self.num_tokens - self.prompt_len >= self.max_new_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
