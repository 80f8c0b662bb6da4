"""The Hugging Face engine: request streams in, a step thread that batches all live sequences, deltas out.

Threads: the asyncio side (`generate`) validates and renders a request, submits its sequences to an inbox and
awaits deltas on a queue. One engine thread owns the scheduler, the cache and the model: it drains the inbox,
runs a step, turns sampled tokens into text and hands each step's deltas back to the event loop in one call.

Async scheduling: the engine thread launches step N+1 before it looks at step N's sampled tokens, so the host's
per-step work (scheduling, input staging, detokenizing, stop strings, delivery) runs while the device computes.
Step N's tokens stay on the device and feed step N+1 directly (runner.py); on the host they are pending
(`Sequence.num_pending`) until step N is resolved. A sequence that step N finishes (EOS, stop string, abort) also
ran in step N+1: that token is dropped, never emitted. A sequence whose pending token is its last is not
scheduled again (`Sequence.is_draining`). Steps that need the host to know every token first (grammar masks,
penalties over the history, multimodal positions) resolve the running step before scheduling.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import torch

from chatplex.config import ChatplexArgs
from chatplex.engines.base import Engine, EngineStats, PromptPreparer
from chatplex.engines.hf import loader, scoring, setup, switch_interval
from chatplex.engines.hf.fresh_thread import run_in_fresh_thread
from chatplex.engines.hf.heap import HeapTrimmer
from chatplex.engines.hf.output_processor import OutputProcessor
from chatplex.engines.hf.runner import StepOutput
from chatplex.engines.hf.sampler import SamplingRow
from chatplex.engines.hf.sequence import Sequence
from chatplex.engines.hf.streams import RequestStream, deliver
from chatplex.errors import (
    ContextLengthExceededError,
    EngineClosedError,
    EngineError,
    EngineOverloadedError,
    NotFoundError,
    UnsupportedFeatureError,
)
from chatplex.media import media_items, text_only_error
from chatplex.types import Delta, FinishReason, GenerationRequest, SamplingParams, TokenLogprob, new_request_id

logger = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.00005


class HFEngine(Engine):
    backend = "huggingface"
    supports_constraints = True  # response_format / forced tool calls, via chatplex.structured
    # Set when the model loads (start) and kept after close.
    device: torch.device
    dtype: torch.dtype
    tokenizer: Any
    prompts: PromptPreparer
    eos_ids: frozenset[int]

    def __init__(self, args: ChatplexArgs) -> None:
        self.args = args
        self._name = loader.model_source(args.model)[2] if args.model.model_name_or_path else "SmolLM2-135M-Instruct"
        self._cv = threading.Condition()
        self._inbox: list[tuple[str, Any]] = []
        self._streams: dict[str, RequestStream] = {}
        self._heap = HeapTrimmer()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._holds_switch_interval = False  # a CUDA engine lowers the GIL switch interval while it runs
        self._active_requests = 0
        self._stats = EngineStats()
        self.parts: setup.EngineParts | None = None  # model, cache, scheduler, runner...: set by start, dropped by close
        self.default_adapter: str | None = None  # the unmerged adapter_name_or_path, for requests naming none
        self._grammars: Any = None  # the GrammarCompiler, made for the first constrained request
        self.async_scheduling = True  # launch step N+1 before processing step N's tokens (benchmarks turn it off)
        self._inflight: StepOutput | None = None  # the launched step whose tokens the host has not seen yet
        self._history_seqs: set[Sequence] = set()  # live sequences whose sampling needs every token on the host
        # Seconds the engine thread spent per phase (a developer's view of where a step's time goes).
        self.phase_seconds = {"schedule": 0.0, "launch": 0.0, "wait": 0.0, "process": 0.0, "deliver": 0.0,
                              "launch_eager": 0.0}  # launch_eager: the part of launch spent in non-graph steps

    # ---- loading -------------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int | None:
        return self.parts.model.config.get_text_config().vocab_size if self.parts is not None else None

    async def start(self) -> None:
        await run_in_fresh_thread(self._load)
        if self.device.type == "cuda":
            # The engine thread releases the GIL in every device call (graph launch, copies, event waits) and must
            # get it back at once to keep the GPU fed; at Python's default 5 ms a busy event loop thread (one
            # coroutine wake per stream per step) holds it that long each time (switch_interval.py).
            switch_interval.lower(GIL_SWITCH_INTERVAL_S)
            self._holds_switch_interval = True
        self._thread = threading.Thread(target=self._run, name="chatplex-hf-engine", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        parts = setup.build(self.args.model, self._name)
        self.parts, self._name, self.default_adapter = parts, parts.name, parts.default_adapter
        # What the model was loaded as stays readable after close (benchmarks and callers compare with it).
        self.device, self.dtype, self.tokenizer = parts.device, parts.dtype, parts.tokenizer
        self.prompts, self.eos_ids = parts.prompts, parts.eos_ids
        self.output = OutputProcessor(parts.tokenizer, parts.eos_ids, parts.template_stops, parts.prompts.max_model_len)

    def _loaded(self) -> setup.EngineParts:
        if self.parts is None:
            raise EngineClosedError("The engine is not running.")
        return self.parts

    # The loaded parts that hold the weights, the cache and the step's state (setup.EngineParts), by name, for the
    # step loop and for tests and benchmarks that look in; close() lets them all go at once.
    model = property(lambda self: self._loaded().model)
    cache = property(lambda self: self._loaded().cache)
    blocks = property(lambda self: self._loaded().blocks)
    scheduler = property(lambda self: self._loaded().scheduler)
    runner = property(lambda self: self._loaded().runner)
    multimodal = property(lambda self: self._loaded().multimodal)

    # ---- the asyncio side ----------------------------------------------------------------------------------
    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompts.prompt_ids(request))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self._closing or self._thread is None:
            raise EngineClosedError("The engine is not running.")
        if self.is_reward_model:
            raise UnsupportedFeatureError(
                f"{self._name} is a reward model: it scores (/v1/score, get_scores) and cannot chat or complete.",
                param="model",
            )
        adapter = self._resolve_adapter(request.adapter)
        media = None
        items = media_items(request)
        if items:
            if self.multimodal is None:
                raise text_only_error(items[0][0], self._name)
            # Decoding, fetching and preprocessing media is blocking work: keep it off the event loop.
            prompt_ids, media = await run_in_fresh_thread(self.multimodal.prepare, self.prompts, request)
        else:
            prompt_ids = self.prompts.prompt_ids(request)
        matchers = await self._grammar_matchers(request)
        self._check_cache_holds(len(prompt_ids) + 1, "The prompt", "messages")
        margs = self.args.model
        if margs.max_waiting_requests is not None and self._active_requests >= margs.max_num_seqs + margs.max_waiting_requests:
            raise EngineOverloadedError(
                f"The engine is full ({self._active_requests} requests running or waiting); retry shortly."
            )
        stream = RequestStream(asyncio.get_running_loop(), asyncio.Queue())
        stream.seqs = self._new_sequences(request, prompt_ids, matchers)
        for seq in stream.seqs:
            seq.adapter = adapter
            seq.media = media
        self._active_requests += 1
        self._post("add", (request.request_id, stream))
        finished = 0
        try:
            while finished < len(stream.seqs):
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    finished += 1
                yield item
        finally:
            self._active_requests -= 1
            if finished < len(stream.seqs):
                self._post("abort", request.request_id)

    async def _grammar_matchers(self, request: GenerationRequest) -> list[Any] | None:
        """One grammar matcher per sequence for a constrained request (compiled off the event loop)."""
        if request.constraint is None:
            return None
        if self._grammars is None:
            from chatplex.structured.matcher import GrammarCompiler

            self._grammars = await asyncio.to_thread(GrammarCompiler, self.tokenizer, self.vocab_size, list(self.eos_ids))
        return await asyncio.to_thread(self._grammars.matchers, request.constraint, request.sampling.n)

    def _new_sequences(self, request: GenerationRequest, prompt_ids: list[int], matchers: list[Any] | None = None) -> list[Sequence]:
        sp = request.sampling
        max_new = self.prompts.max_new_tokens(len(prompt_ids), request)
        seqs = []
        for index in range(sp.n):
            generator = None
            if sp.seed is not None and not sp.greedy:
                generator = torch.Generator(self.device).manual_seed(sp.seed + index)
            seq = Sequence(request.request_id, index, list(prompt_ids), len(prompt_ids), sp, max_new)
            self.output.init_state(seq, generator, matchers[index] if matchers else None)
            seqs.append(seq)
        return seqs

    # ---- reward scores and LoRA adapters ------------------------------------------------------------------
    @property
    def is_reward_model(self) -> bool:
        return self.parts is not None and self.parts.runner.score_head is not None

    @property
    def adapters(self) -> list[str]:
        lora = self.parts.runner.lora if self.parts is not None else None
        return [n for n in lora.names if n != self.default_adapter] if lora is not None else []

    def _resolve_adapter(self, name: str | None) -> str | None:
        if name is None:
            return self.default_adapter
        if name not in self.adapters:
            raise NotFoundError(f"The LoRA adapter {name!r} is not loaded.", param="model", code="model_not_found")
        return name

    def _check_cache_holds(self, tokens: int, what: str, param: str) -> None:
        """A sequence longer than the whole KV cache would wait for blocks forever: refuse it at admission."""
        if tokens > self.blocks.capacity_tokens:
            raise ContextLengthExceededError(
                f"{what} has {tokens} tokens but the KV cache holds {self.blocks.capacity_tokens}; "
                "raise kv_cache_memory_gb or shorten it.", param=param,
            )

    async def score(self, inputs: list[Any], max_length: int | None = None, truncation_side: str = "right") -> list[float]:
        """Raw scores, one per input (a string, or a conversation rendered with the template), in one batch."""
        if not self.is_reward_model:
            return await super().score(inputs, max_length, truncation_side)
        if self._closing or self._thread is None:
            raise EngineClosedError("The engine is not running.")
        scoring.check_max_length(max_length)
        ids = [scoring.input_ids(self.prompts, x, i, max_length, truncation_side) for i, x in enumerate(inputs)]
        for i, x in enumerate(ids):
            self._check_cache_holds(len(x), f"batch_input[{i}]", "batch_input")
        request_id = new_request_id("score")
        stream = RequestStream(asyncio.get_running_loop(), asyncio.Queue())
        stream.seqs = [Sequence(request_id, i, x, len(x), SamplingParams(), 0) for i, x in enumerate(ids)]
        self._post("add", (request_id, stream))
        scores: list[float] = [0.0] * len(ids)
        done = 0
        try:
            while done < len(ids):
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                scores[item[0]] = item[1]
                done += 1
        finally:
            if done < len(ids):
                self._post("abort", request_id)
        return scores

    def _score_step(self, batch: list[Any]) -> list[tuple[RequestStream, Any]]:
        """A reward model's step: every sequence whose last token ran is finished with its score."""
        try:
            scores = self.runner.score(batch)
        except Exception as e:  # keep serving: fail only the requests in this step
            logger.exception("Engine step failed")
            self._fail([it.seq for it in batch], e)
            return []
        self.scheduler.complete_step(batch)
        self._stats.steps += 1
        self._stats.max_batch_size = max(self._stats.max_batch_size, len(batch))
        out = []
        for it in batch:
            if it.seq.seq_id in scores:
                stream, _ = self._finish_delta(it.seq, "stop", [])
                out.append((stream, (it.seq.index, scores[it.seq.seq_id])))
        return out

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter at run time (between engine steps)."""
        await self._adapter_op("load", name, path)

    async def unload_adapter(self, name: str) -> None:
        await self._adapter_op("unload", name, None)

    async def _adapter_op(self, op: str, name: str, path: str | None) -> None:
        if self.is_reward_model:
            raise UnsupportedFeatureError("A reward model scores with merged adapters; it loads none at run time.", param="lora_name")
        if op == "unload" and name not in self.adapters:
            raise NotFoundError(f"The LoRA adapter {name!r} is not loaded.", param="lora_name", code="model_not_found")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._post("adapter", (op, name, path, loop, future))
        await future

    def _apply_adapter_op(self, op: str, name: str, path: str | None) -> None:
        """On the engine thread: load or unload an adapter (refused while a live request uses it)."""
        if op == "unload":
            users = sum(s.adapter == name for st in self._streams.values() for s in st.seqs if not s.is_finished)
            if users:
                raise UnsupportedFeatureError(f"lora_name: the adapter {name!r} is in use by {users} sequences.", param="lora_name")
            self.runner.lora.unload(name)
            return
        if self.runner.lora is None:
            from chatplex.engines.hf.lora import LoraAdapters

            self.runner.lora = LoraAdapters(self.model, self.args.model.max_loras)
        self.runner.lora.load(name, path or "")

    def _post(self, kind: str, payload: Any) -> None:
        with self._cv:
            self._inbox.append((kind, payload))
            self._cv.notify()

    def stats(self) -> EngineStats:
        """A snapshot of the counters (read from another thread: good enough for metrics and tests)."""
        if self.parts is None:
            return dataclasses.replace(self._stats)
        return dataclasses.replace(
            self._stats,
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            preemptions=self.scheduler.num_preemptions,
        )

    # ---- the engine thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        profile_path = os.environ.get("CHATPLEX_PROFILE")
        if not profile_path:
            return self._loop()
        import cProfile  # a developer's switch: profile the engine thread, dump stats at close

        profiler = cProfile.Profile()
        profiler.runcall(self._loop)
        profiler.dump_stats(profile_path)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._inbox and not self.scheduler.has_work and self._inflight is None and not self._closing:
                    self._cv.wait()
                if self._closing:
                    break
                inbox, self._inbox = self._inbox, []
            self._apply_inbox(inbox)
            if self.scheduler.has_work or self._inflight is not None:
                self._step()
            self._heap.maybe_trim()

    def _apply_inbox(self, inbox: list[tuple[str, Any]]) -> None:
        for kind, payload in inbox:
            if kind == "add":
                request_id, stream = payload
                self._streams[request_id] = stream
                for seq in stream.seqs:
                    self.scheduler.add(seq)
                    if seq.matcher is not None or seq.sampling.needs_penalties:
                        self._history_seqs.add(seq)
                self._stats.prompt_tokens += stream.seqs[0].prompt_len
            elif kind == "adapter":
                op, name, path, loop, future = payload
                try:
                    self._apply_adapter_op(op, name, path)
                    loop.call_soon_threadsafe(future.set_result, None)
                except Exception as e:  # the caller gets it; the engine keeps serving
                    loop.call_soon_threadsafe(future.set_exception, e)
            elif kind == "abort" and payload in self._streams:
                for seq in self._streams.pop(payload).seqs:
                    self.scheduler.finish(seq, "abort")
                self._stats.aborted_requests += 1

    def _step(self) -> None:
        out: list[tuple[RequestStream, Delta | BaseException]] = []
        phase = self.phase_seconds
        if self._inflight is not None and not self._can_overlap():
            out.extend(self._resolve(self._inflight))
            self._inflight = None
        t0 = time.perf_counter()
        batch, too_long = self.scheduler.schedule()
        for seq in too_long:
            out.append(self._finish_delta(seq, "length", []))
        t1 = time.perf_counter()
        phase["schedule"] += t1 - t0
        launched = None
        if batch and self.is_reward_model:
            out.extend(self._score_step(batch))
        elif batch:
            rows = {it.seq.seq_id: self._sampling_row(it.seq) for it in batch if it.samples}
            graph_steps = self.runner.graph_steps
            try:
                launched = self.runner.execute(batch, rows)
            except Exception as e:  # keep serving: fail only the requests in this step
                logger.exception("Engine step failed")
                self._fail([it.seq for it in batch], e)
            if launched is not None:
                self.scheduler.complete_step(batch)
                for seq in launched.seqs:
                    seq.num_pending += 1
                self._stats.steps += 1
                self._stats.max_batch_size = max(self._stats.max_batch_size, len(batch))
        phase["launch"] += time.perf_counter() - t1
        if batch and not self.is_reward_model and self.runner.graph_steps == graph_steps:
            phase["launch_eager"] += time.perf_counter() - t1
        if self._inflight is not None:
            if launched is not None:
                self._stats.overlapped_steps += 1
            out.extend(self._resolve(self._inflight))
        self._inflight = launched
        if launched is not None and not self.async_scheduling:
            out.extend(self._resolve(launched))
            self._inflight = None
        t2 = time.perf_counter()
        deliver(out)
        phase["deliver"] += time.perf_counter() - t2

    def _can_overlap(self) -> bool:
        """Whether the next step may be scheduled before the running step's tokens reach the host."""
        if not self.async_scheduling or self.runner.multimodal is not None:
            return False
        if self._history_seqs:
            self._history_seqs = {s for s in self._history_seqs if not s.is_finished}
        return not self._history_seqs

    def _resolve(self, step: StepOutput) -> list[tuple[RequestStream, Delta]]:
        """Wait for a launched step's tokens and turn them into deltas; sequences finished meanwhile drop theirs."""
        t0 = time.perf_counter()
        result = step.sample.result() if step.sample is not None else None
        t1 = time.perf_counter()
        out = []
        for row, seq in enumerate(step.seqs):
            seq.num_pending -= 1
            if not seq.is_finished:
                out.append(self._on_token(seq, row, result))
        self.phase_seconds["wait"] += t1 - t0
        self.phase_seconds["process"] += time.perf_counter() - t1
        return out

    def _sampling_row(self, seq: Sequence) -> SamplingRow:
        row = seq.row
        if row is not None:
            return row
        matcher = seq.matcher
        allowed = matcher.allowed() if matcher is not None else None
        suppressed = self.output.suppressed(seq)
        row = SamplingRow(seq.sampling, seq.token_ids, seq.prompt_len, seq.generator, suppressed, allowed)
        if matcher is None and not suppressed:
            seq.row = row  # nothing in it changes from now on (token_ids is the sequence's own list)
        return row

    def _on_token(self, seq: Sequence, row: int, result: Any) -> tuple[RequestStream, Delta]:
        token = result.token_ids[row]
        self._stats.generated_tokens += 1
        text, reason, stop_reason = self.output.on_token(seq, token)
        logprobs = self.output.logprobs(token, row, result) if seq.sampling.logprobs is not None else None
        if reason is not None:
            return self._finish_delta(seq, reason, [token], text, logprobs, stop_reason)
        stream = self._streams[seq.request_id]
        return stream, Delta(seq.index, text, [token], seq.prompt_len, seq.num_output_tokens, logprobs)

    def _finish_delta(
        self,
        seq: Sequence,
        reason: FinishReason,
        tokens: list[int],
        text: str = "",
        logprobs: list[TokenLogprob] | None = None,
        stop_reason: str | int | None = None,
    ) -> tuple[RequestStream, Delta]:
        self.scheduler.finish(seq, reason)
        stream = self._streams[seq.request_id]
        if all(s.is_finished for s in stream.seqs):
            del self._streams[seq.request_id]
            self._stats.finished_requests += 1
        delta = Delta(seq.index, text, tokens, seq.prompt_len, seq.num_output_tokens, logprobs, reason, stop_reason)
        return stream, delta

    def _fail(self, seqs: list[Sequence], error: Exception) -> None:
        failed: list[tuple[RequestStream, Delta | BaseException]] = []
        for request_id in {s.request_id for s in seqs}:
            stream = self._streams.pop(request_id, None)
            if stream is None:
                continue
            for seq in stream.seqs:
                self.scheduler.finish(seq, "abort")
            err = EngineError(f"The engine failed while generating: {type(error).__name__}: {error}")
            err.__cause__ = error
            failed.append((stream, err))
        deliver(failed)

    # ---- shutdown ------------------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closing:
            return
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        pending = [(stream, EngineClosedError("The engine was closed.")) for stream in self._streams.values()]
        self._streams.clear()
        deliver(pending)  # type: ignore[arg-type]
        self._stats = self.stats()  # the scheduler's counters, kept for who reads them after close
        self.parts = None  # the model, its cache and the runner go with it
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self._holds_switch_interval:
            self._holds_switch_interval = False
            switch_interval.release()
