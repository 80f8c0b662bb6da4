"""The Hugging Face engine's thread: it owns the scheduler, the cache and the model.

It waits on an inbox (requests to add, requests to abort, calls to run between steps such as loading an adapter),
runs steps (steps.py: schedule -> launch -> process outputs) while there is work, and hands each step's deltas to
the event loops in one call per loop (streams.py). The asyncio side (engine.py) only posts to the inbox and reads
its requests' queues.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chatplex.engines.base import EngineStats
from chatplex.engines.hf.heap import HeapTrimmer
from chatplex.engines.hf.output_processor import OutputProcessor
from chatplex.engines.hf.runner import StepOutput
from chatplex.engines.hf.sampler import SamplingRow
from chatplex.engines.hf.scheduler import ScheduledSeq
from chatplex.engines.hf.sequence import Sequence
from chatplex.engines.hf.setup import EngineParts
from chatplex.engines.hf.steps import PhaseTimer, Steps, choose
from chatplex.engines.hf.streams import RequestStream, deliver
from chatplex.errors import EngineClosedError, EngineError
from chatplex.types import Delta, FinishReason, TokenLogprob

logger = logging.getLogger(__name__)


@dataclass
class _Call:
    """A function the engine thread runs between steps, its result going to an awaiting coroutine."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class EngineCore:
    def __init__(
        self, parts: EngineParts, output: OutputProcessor, stats: EngineStats, *, async_scheduling: bool | None
    ):
        self.scheduler = parts.scheduler
        self.runner = parts.runner
        self.output = output
        self.stats = stats
        self.timer = PhaseTimer()
        self.streams: dict[str, RequestStream] = {}
        self._out: list[tuple[RequestStream, Any]] = []  # this step's deltas and failures, delivered at its end
        self._history_seqs: set[Sequence] = set()  # live sequences whose sampling needs every token on the host
        # Models with media need the host to know every token before the next step (their positions depend on it).
        # On a CPU a launch runs the whole forward pass before it returns, so by default nothing overlaps there:
        # overlapping would hold each step's tokens back until the next step ends (a prompt prefilled alone would
        # see its first token only after the next, maybe long, step).
        if async_scheduling is None:
            async_scheduling = parts.device.type != "cpu"
        overlap = async_scheduling and parts.multimodal is None
        self.steps: Steps = choose(self, scores=parts.runner.score_head is not None, overlap=overlap)
        self._cv = threading.Condition()
        self._inbox: list[tuple[str, Any]] = []
        self._closing = False
        self.stopped_by: BaseException | None = None  # what ended the thread, if not close()
        self._heap = HeapTrimmer()
        self._thread = threading.Thread(target=self._run, name="chatplex-hf-engine", daemon=True)

    # ---- from other threads ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def add(self, request_id: str, stream: RequestStream) -> None:
        self._post("add", (request_id, stream))

    def abort(self, request_id: str) -> None:
        self._post("abort", request_id)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the engine thread between two steps; its result or exception comes back here."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._post("call", _Call(fn, loop, future))
        return await future

    def stop(self) -> list[RequestStream]:
        """Stop the thread (after its current step) and return the streams still open."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()
        open_streams = list(self.streams.values())
        self.streams.clear()
        return open_streams

    def _post(self, kind: str, payload: Any) -> None:
        with self._cv:
            if self._closing:
                if kind == "abort":
                    return  # close() ends every open request itself
                if self.stopped_by is not None:
                    raise EngineError(f"The engine stopped: {type(self.stopped_by).__name__}: {self.stopped_by}")
                raise EngineClosedError("The engine is not running.")
            self._inbox.append((kind, payload))
            self._cv.notify()

    # ---- the engine thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            profile_path = os.environ.get("CHATPLEX_PROFILE")
            if not profile_path:
                return self._loop()
            import cProfile  # a developer's switch (README): profile the engine thread, dump stats at close

            profiler = cProfile.Profile()
            profiler.runcall(self._loop)
            profiler.dump_stats(profile_path)
        except BaseException as e:  # a bug or a broken device: end every request with it rather than hang them
            logger.exception("The engine thread stopped")
            with self._cv:
                self._closing = True
                self.stopped_by = e
                inbox, self._inbox = self._inbox, []
            streams = list(self.streams.values()) + [payload[1] for kind, payload in inbox if kind == "add"]
            self.streams.clear()
            failed = []
            for stream in streams:
                err = EngineError(f"The engine stopped: {type(e).__name__}: {e}")
                err.__cause__ = e
                failed.append((stream, err))
            deliver(failed)
            for kind, payload in inbox:
                if kind == "call":
                    payload.loop.call_soon_threadsafe(payload.future.set_exception, EngineError("The engine stopped."))

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._inbox or self._has_work() or self._closing):
                    self._cv.wait()
                if self._closing:
                    return
                inbox, self._inbox = self._inbox, []
            self._apply(inbox)
            if self._has_work():
                self.steps.step()
                with self.timer("deliver"):
                    out, self._out = self._out, []
                    deliver(out)
            self._heap.maybe_trim()

    def _has_work(self) -> bool:
        return self.scheduler.has_work or self.steps.inflight is not None

    def _apply(self, inbox: list[tuple[str, Any]]) -> None:
        for kind, payload in inbox:
            if kind == "add":
                request_id, stream = payload
                self.streams[request_id] = stream
                for seq in stream.seqs:
                    self.scheduler.add(seq)
                    if seq.matcher is not None or seq.sampling.needs_penalties:
                        self._history_seqs.add(seq)
                self.stats.prompt_tokens += stream.seqs[0].prompt_len
            elif kind == "call":
                try:
                    result = payload.fn()
                except Exception as e:  # noqa: BLE001 - the caller gets it; the engine keeps serving
                    payload.loop.call_soon_threadsafe(payload.future.set_exception, e)
                else:
                    payload.loop.call_soon_threadsafe(payload.future.set_result, result)
            elif kind == "abort" and payload in self.streams:
                for seq in self.streams.pop(payload).seqs:
                    self.scheduler.finish(seq, "abort")
                self.stats.aborted_requests += 1

    # ---- the verbs of a step (steps.py puts them in order) ---------------------------------------------------
    def schedule(self) -> list[ScheduledSeq]:
        """This step's chunks; sequences the cache can never hold finish here with "length"."""
        with self.timer("schedule"):
            batch, too_long = self.scheduler.schedule()
            for seq in too_long:
                self.finish(seq, "length")
        return batch

    def launch(self, batch: list[ScheduledSeq]) -> StepOutput | None:
        """Start the step on the device; None when there was nothing to run or it failed (its requests get the
        error, the engine keeps serving)."""
        if not batch:
            return None
        with self.timer("launch") as span:
            rows = {it.seq.seq_id: self._sampling_row(it.seq) for it in batch if it.samples}
            try:
                launched = self.runner.execute(batch, rows)
            except Exception as e:
                logger.exception("Engine step failed")
                self.fail([it.seq for it in batch], e)
                return None
            self.scheduler.complete_step(batch, launched.seqs)
            self.stats.steps += 1
            self.stats.max_batch_size = max(self.stats.max_batch_size, len(batch))
        if not launched.replayed:
            self.timer.seconds["launch_eager"] += span.seconds
        return launched

    def process(self, step: StepOutput) -> None:
        """Wait for a launched step's tokens and turn them into deltas; sequences finished meanwhile drop theirs."""
        with self.timer("wait"):
            result = step.sample.result() if step.sample is not None else None
        with self.timer("process"):
            for row, seq in enumerate(step.seqs):
                if self.scheduler.token_arrived(seq):
                    self._on_token(seq, row, result)

    def needs_host_tokens(self) -> bool:
        """Whether a live sequence's next sampling needs every token on the host (grammar masks, penalties)."""
        if self._history_seqs:
            self._history_seqs = {s for s in self._history_seqs if not s.is_finished}
        return bool(self._history_seqs)

    def score(self, batch: list[ScheduledSeq]) -> None:
        """A reward model's step: every sequence whose last token ran finishes with its score."""
        if not batch:
            return
        with self.timer("launch"):
            try:
                scores = self.runner.score(batch)
            except Exception as e:
                logger.exception("Engine step failed")
                self.fail([it.seq for it in batch], e)
                return
            self.scheduler.complete_step(batch, [])
            self.stats.steps += 1
            self.stats.max_batch_size = max(self.stats.max_batch_size, len(batch))
        for it in batch:
            if it.seq.seq_id in scores:
                stream = self._finish(it.seq, "stop")
                self._out.append((stream, (it.seq.index, scores[it.seq.seq_id])))

    def live_sequences(self) -> list[Sequence]:
        """The sequences of every open request (on the engine thread)."""
        return [seq for stream in self.streams.values() for seq in stream.seqs]

    # ---- per sequence ----------------------------------------------------------------------------------------
    def _sampling_row(self, seq: Sequence) -> SamplingRow:
        if seq.row is not None:
            return seq.row
        allowed = seq.matcher.allowed() if seq.matcher is not None else None
        suppressed = self.output.suppressed(seq)
        row = SamplingRow(seq.sampling, seq.token_ids, seq.prompt_len, seq.generator, suppressed, allowed)
        if seq.matcher is None and not suppressed:
            seq.row = row  # nothing in it changes from now on (token_ids is the sequence's own list)
        return row

    def _on_token(self, seq: Sequence, row: int, result: Any) -> None:
        token = result.token_ids[row]
        self.stats.generated_tokens += 1
        text, reason, stop_reason = self.output.on_token(seq, token)
        logprobs = self.output.logprobs(token, row, result) if seq.sampling.logprobs is not None else None
        if reason is not None:
            self.finish(seq, reason, [token], text, logprobs, stop_reason)
            return
        delta = Delta(
            index=seq.index,
            text=text,
            token_ids=[token],
            prompt_tokens=seq.prompt_len,
            completion_tokens=seq.num_output_tokens,
            logprobs=logprobs,
            cached_tokens=seq.num_cached_tokens,
        )
        self._out.append((self.streams[seq.request_id], delta))

    def finish(
        self,
        seq: Sequence,
        reason: FinishReason,
        tokens: list[int] | None = None,
        text: str = "",
        logprobs: list[TokenLogprob] | None = None,
        stop_reason: str | int | None = None,
    ) -> None:
        """End a sequence and send its last delta."""
        stream = self._finish(seq, reason)
        delta = Delta(
            index=seq.index,
            text=text,
            token_ids=tokens or [],
            prompt_tokens=seq.prompt_len,
            completion_tokens=seq.num_output_tokens,
            logprobs=logprobs,
            finish_reason=reason,
            stop_reason=stop_reason,
            cached_tokens=seq.num_cached_tokens,
        )
        self._out.append((stream, delta))

    def _finish(self, seq: Sequence, reason: FinishReason) -> RequestStream:
        self.scheduler.finish(seq, reason)
        stream = self.streams[seq.request_id]
        if all(s.is_finished for s in stream.seqs):
            del self.streams[seq.request_id]
            self.stats.finished_requests += 1
        return stream

    def fail(self, seqs: list[Sequence], error: Exception) -> None:
        """End the requests these sequences belong to with an EngineError naming the cause."""
        for request_id in {s.request_id for s in seqs}:
            stream = self.streams.pop(request_id, None)
            if stream is None:
                continue
            for seq in stream.seqs:
                self.scheduler.finish(seq, "abort")
            err = EngineError(f"The engine failed while generating: {type(error).__name__}: {error}")
            err.__cause__ = error
            self._out.append((stream, err))
