"""How the engine thread runs a step, chosen once when the engine starts: schedule -> launch -> process outputs.

Three variants over the same verbs (core.py):
  * `OverlappedSteps` (async scheduling, the default): launch step N+1, then process step N's tokens while N+1
    runs on the device. Step N's tokens stay on the device and feed step N+1 directly (runner.py); on the host
    they are pending (`Sequence.num_pending`) until step N is processed. A sequence that step N finishes (EOS,
    stop string, abort) also ran in step N+1: that token is dropped, never emitted. Steps whose sampling needs
    every token on the host first (grammar masks, penalties over the history) process the running step before
    scheduling the next.
  * `SyncSteps`: one step at a time (async_scheduling: false, the default on a CPU, and models with media, whose
    positions need the host to know every token).
  * `ScoringSteps`: a reward model's step; each sequence whose last token ran finishes with its score.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from chatplex.engines.hf.core import EngineCore
    from chatplex.engines.hf.runner import StepOutput

PHASES = ("schedule", "launch", "launch_eager", "wait", "process", "deliver")


class PhaseTimer:
    """Seconds the engine thread spends per phase of a step (a developer's view of where a step's time goes; see
    benchmarks/gpu_diagnose.py). `launch_eager` is the part of `launch` spent in steps that did not replay a
    CUDA graph."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[Span]:
        span = Span()
        start = time.perf_counter()
        try:
            yield span
        finally:
            span.seconds = time.perf_counter() - start
            self.seconds[phase] += span.seconds


class Span:
    """How long one timed phase took (read after its `with` block)."""

    seconds = 0.0


class Steps(Protocol):
    inflight: StepOutput | None  # a launched step whose tokens the host has not processed yet

    def step(self) -> None: ...


class SyncSteps:
    """Launch a step, wait for its tokens, process them; then the next."""

    inflight: StepOutput | None = None

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    def step(self) -> None:
        launched = self.core.launch(self.core.schedule())
        if launched is not None:
            self.core.process(launched)


class OverlappedSteps:
    """Launch step N+1 before processing step N's tokens, so the host's per-step work (scheduling, input staging,
    detokenizing, stop strings, delivery) runs while the device computes."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.inflight: StepOutput | None = None

    def step(self) -> None:
        core, running = self.core, self.inflight
        if running is not None and core.needs_host_tokens():
            core.process(running)
            running = None
        launched = core.launch(core.schedule())
        if running is not None:
            if launched is not None:
                core.stats.overlapped_steps += 1
            core.process(running)
        self.inflight = launched


class ScoringSteps:
    """A reward model: run the scheduled chunks; a sequence whose last token ran finishes with its score."""

    inflight: StepOutput | None = None

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    def step(self) -> None:
        self.core.score(self.core.schedule())


def choose(core: EngineCore, *, scores: bool, overlap: bool) -> Steps:
    if scores:
        return ScoringSteps(core)
    return OverlappedSteps(core) if overlap else SyncSteps(core)
