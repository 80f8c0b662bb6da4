"""Per-sequence state. One request with n > 1 has n sequences."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from chatplex.types import FinishReason, SamplingParams

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
    block_table: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    # Engine-side helpers (generator, detokenizer, stop matcher) live here so they die with the sequence.
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
