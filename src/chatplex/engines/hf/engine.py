"""The Hugging Face engine: request streams in, a step thread that batches all live sequences, deltas out.

Threads: the asyncio side (`generate`) validates and renders a request, submits its sequences to an inbox and
awaits deltas on a queue. One engine thread owns the scheduler, the cache and the model: it drains the inbox,
runs a step, turns sampled tokens into text and hands each step's deltas back to the event loop in one call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from chatplex.config import ChatplexArgs
from chatplex.engines.base import Engine, EngineStats, PromptPreparer
from chatplex.engines.detokenizer import StreamingDetokenizer
from chatplex.engines.hf import attention, loader, scoring
from chatplex.engines.hf.block_manager import BlockManager
from chatplex.engines.hf.cuda_graphs import DecodeGraphs
from chatplex.engines.hf.kv_cache import PagedKVCache, budget_bytes
from chatplex.engines.hf.runner import ModelRunner
from chatplex.engines.hf.sampler import SampleOutput, SamplingRow
from chatplex.engines.hf.scheduler import Scheduler
from chatplex.engines.hf.sequence import Sequence
from chatplex.engines.stop_strings import StopStringMatcher
from chatplex.models.dummy import dummy_model, dummy_tokenizer
from chatplex.errors import (
    ContextLengthExceededError,
    EngineClosedError,
    EngineError,
    EngineOverloadedError,
    NotFoundError,
    UnsupportedFeatureError,
)
from chatplex.templates import resolve_template
from chatplex.types import Delta, FinishReason, GenerationRequest, SamplingParams, TokenLogprob, TopLogprob, new_request_id

logger = logging.getLogger(__name__)


@dataclass
class _RequestStream:
    """The asyncio side of one request: where its deltas go."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    seqs: list[Sequence] = field(default_factory=list)


class HFEngine(Engine):
    backend = "huggingface"
    supports_constraints = True  # response_format / forced tool calls, via chatplex.structured

    def __init__(self, args: ChatplexArgs) -> None:
        self.args = args
        self._name = loader.model_source(args.model)[2] if args.model.model_name_or_path else "SmolLM2-135M-Instruct"
        self._cv = threading.Condition()
        self._inbox: list[tuple[str, Any]] = []
        self._streams: dict[str, _RequestStream] = {}
        self._thread: threading.Thread | None = None
        self._closing = False
        self._active_requests = 0
        self._stats = EngineStats()
        self.default_adapter: str | None = None  # the unmerged adapter_name_or_path, for requests naming none

    # ---- loading -------------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._name

    @property
    def max_model_len(self) -> int | None:
        return self.prompts.max_model_len if hasattr(self, "prompts") else None

    @property
    def vocab_size(self) -> int | None:
        return self.model.config.get_text_config().vocab_size if hasattr(self, "model") else None

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._run, name="chatplex-hf-engine", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        margs = self.args.model
        self.device = loader.pick_device(margs.device)
        score_head = lora = None
        if margs.dummy_weights:
            self.dtype = loader.resolve_dtype(margs, None, self.device)
            model = dummy_model(margs.dummy_weights, self.device, self.dtype)
            self.tokenizer = dummy_tokenizer(model.config.vocab_size)
            self._name = margs.dummy_weights
        else:
            self.tokenizer = loader.load_tokenizer(margs)
            fmt = loader.score_format(margs)
            model = self._load_weights(margs, classifier=fmt is not None and fmt.kind == "sequence_classification")
            model, score_head, lora, self.default_adapter = loader.attach_adapters_and_head(
                model, margs, fmt, self.device, self.dtype
            )
        model.set_attn_implementation(attention.register())
        self.model = model
        text_config = model.config.get_text_config()
        max_len = margs.max_model_len or getattr(text_config, "max_position_embeddings", None) or 2048
        block_size = margs.kv_block_size
        use_graphs = self.device.type == "cuda" and not margs.enforce_eager
        budget = budget_bytes(self.device, margs.kv_cache_memory_gb, margs.gpu_memory_utilization)
        num_blocks = PagedKVCache.num_blocks_for(model.config, self.dtype, block_size, budget)
        # No point holding more than every slot filled to the context limit (+1: the scratch block).
        num_blocks = min(num_blocks, margs.max_num_seqs * -(-max_len // block_size) + 1)
        if num_blocks < 2:
            raise EngineError("The KV-cache budget holds no block; raise kv_cache_memory_gb or gpu_memory_utilization.")
        self.cache = PagedKVCache(model.config, num_blocks, block_size, self.dtype, self.device)
        # Block 0 is scratch: CUDA-graph padding rows write there.
        self.blocks = BlockManager(num_blocks, block_size, reserved=1)
        self.scheduler = Scheduler(
            self.blocks, max_num_seqs=margs.max_num_seqs, max_num_batched_tokens=margs.max_num_batched_tokens
        )
        graphs = None
        if use_graphs:
            graphs = DecodeGraphs(
                model, self.cache, self.device, margs.max_num_seqs, -(-max_len // block_size), compile=margs.compile
            )
            graphs.capture()
        self.runner = ModelRunner(model, self.cache, self.device, graphs, lora, score_head)
        template = resolve_template(margs.template, margs.chat_template, self.tokenizer)
        self.prompts = PromptPreparer(self.tokenizer, template, max_len)
        self.eos_ids, self.template_stops = self._stop_tokens(template.stop_words)
        logger.info(
            "Loaded %s on %s (%s); KV cache %d blocks x %d tokens; CUDA graphs %s",
            self._name, self.device, self.dtype, num_blocks, block_size, "on" if graphs else "off",
        )

    def _load_weights(self, margs: Any, classifier: bool = False) -> Any:
        if margs.infer_dtype == "auto" and self.device.type == "cpu":
            model = loader.load_model(margs, self.device, torch.float32, classifier)
            self.dtype = loader.resolve_dtype(margs, model, self.device)
            return model.to(self.dtype)
        self.dtype = loader.resolve_dtype(margs, None, self.device)
        return loader.load_model(margs, self.device, self.dtype, classifier)

    def _stop_tokens(self, stop_words: tuple[str, ...]) -> tuple[frozenset[int], tuple[str, ...]]:
        """EOS ids from the generation config and tokenizer, plus the template's stop words (ids where single tokens)."""
        ids: set[int] = set()
        # A sequence classifier (reward model) has no generation config.
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        text_stops = []
        for word in stop_words:
            token_id = self.tokenizer.convert_tokens_to_ids(word)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
            else:
                text_stops.append(word)
        return frozenset(ids), tuple(text_stops)

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
        prompt_ids = self.prompts.prompt_ids(request)
        matchers = await self._grammar_matchers(request)
        if len(prompt_ids) + 1 > self.blocks.capacity_tokens:
            raise ContextLengthExceededError(
                f"The prompt has {len(prompt_ids)} tokens but the KV cache holds {self.blocks.capacity_tokens}; "
                "raise kv_cache_memory_gb or shorten the prompt."
            )
        margs = self.args.model
        if margs.max_waiting_requests is not None and self._active_requests >= margs.max_num_seqs + margs.max_waiting_requests:
            raise EngineOverloadedError(
                f"The engine is full ({self._active_requests} requests running or waiting); retry shortly."
            )
        stream = _RequestStream(asyncio.get_running_loop(), asyncio.Queue())
        stream.seqs = self._new_sequences(request, prompt_ids, matchers)
        for seq in stream.seqs:
            seq.state["adapter"] = adapter
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
        if not hasattr(self, "_grammars"):
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
            seq.state.update(
                generator=generator,
                detok=StreamingDetokenizer(self.tokenizer, skip_special_tokens=sp.skip_special_tokens),
                stops=StopStringMatcher(sp.stop + self.template_stops),
                matcher=matchers[index] if matchers else None,
            )
            seqs.append(seq)
        return seqs

    # ---- reward scores and LoRA adapters ------------------------------------------------------------------
    @property
    def is_reward_model(self) -> bool:
        return hasattr(self, "runner") and self.runner.score_head is not None

    @property
    def adapters(self) -> list[str]:
        lora = getattr(self.runner, "lora", None) if hasattr(self, "runner") else None
        return [n for n in lora.names if n != self.default_adapter] if lora is not None else []

    def _resolve_adapter(self, name: str | None) -> str | None:
        if name is None:
            return self.default_adapter
        if name not in self.adapters:
            raise NotFoundError(f"The LoRA adapter {name!r} is not loaded.", param="model", code="model_not_found")
        return name

    async def score(self, inputs: list[Any], max_length: int | None = None) -> list[float]:
        """Raw scores, one per input (a string, or a conversation rendered with the template), in one batch."""
        if not self.is_reward_model:
            return await super().score(inputs, max_length)
        if self._closing or self._thread is None:
            raise EngineClosedError("The engine is not running.")
        scoring.check_max_length(max_length)
        ids = [scoring.input_ids(self.prompts, x, i, max_length) for i, x in enumerate(inputs)]
        request_id = new_request_id("score")
        stream = _RequestStream(asyncio.get_running_loop(), asyncio.Queue())
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

    def _score_step(self, batch: list[Any]) -> list[tuple[_RequestStream, Any]]:
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
            users = sum(s.state.get("adapter") == name for st in self._streams.values() for s in st.seqs if not s.is_finished)
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
        if not hasattr(self, "scheduler"):
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
                while not self._inbox and not self.scheduler.has_work and not self._closing:
                    self._cv.wait()
                if self._closing:
                    break
                inbox, self._inbox = self._inbox, []
            self._apply_inbox(inbox)
            if self.scheduler.has_work:
                self._step()

    def _apply_inbox(self, inbox: list[tuple[str, Any]]) -> None:
        for kind, payload in inbox:
            if kind == "add":
                request_id, stream = payload
                self._streams[request_id] = stream
                for seq in stream.seqs:
                    self.scheduler.add(seq)
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
        batch, too_long = self.scheduler.schedule()
        out: list[tuple[_RequestStream, Delta | BaseException]] = []
        for seq in too_long:
            out.append(self._finish_delta(seq, "length", []))
        if batch and self.is_reward_model:
            out.extend(self._score_step(batch))
        elif batch:
            rows = {it.seq.seq_id: self._sampling_row(it.seq) for it in batch if it.samples}
            try:
                results = self.runner.execute(batch, rows)
            except Exception as e:  # keep serving: fail only the requests in this step
                logger.exception("Engine step failed")
                self._fail([it.seq for it in batch], e)
                return
            self.scheduler.complete_step(batch)
            self._stats.steps += 1
            self._stats.max_batch_size = max(self._stats.max_batch_size, len(batch))
            seqs = {it.seq.seq_id: it.seq for it in batch}
            for seq_id, (row, result) in results.items():
                out.append(self._on_token(seqs[seq_id], row, result))
        self._deliver(out)

    def _sampling_row(self, seq: Sequence) -> SamplingRow:
        suppress: tuple[int, ...] = ()
        if seq.num_output_tokens < seq.sampling.min_new_tokens:
            suppress = tuple(self.eos_ids | set(seq.sampling.stop_token_ids))
        matcher = seq.state.get("matcher")
        allowed = matcher.allowed() if matcher is not None else None
        return SamplingRow(seq.sampling, seq.token_ids, seq.prompt_len, seq.state["generator"], suppress, allowed)

    def _on_token(self, seq: Sequence, row: int, result: SampleOutput) -> tuple[_RequestStream, Delta]:
        token = result.token_ids[row]
        seq.token_ids.append(token)
        self._stats.generated_tokens += 1
        sp = seq.sampling
        detok: StreamingDetokenizer = seq.state["detok"]
        stops: StopStringMatcher = seq.state["stops"]
        reason: FinishReason | None = None
        stop_reason: str | int | None = None
        text = ""
        if token in sp.stop_token_ids or (token in self.eos_ids and not sp.ignore_eos):
            reason, stop_reason = "stop", token
        else:
            text, matched = stops.feed(detok.add_token(token))
            if matched is not None:
                reason, stop_reason = "stop", matched
        matcher = seq.state.get("matcher")
        if matcher is not None:
            matcher.accept(token)
            if reason is None and matcher.is_finished:  # the grammar is complete: nothing more may follow
                reason = "stop"
        if reason is None and (seq.num_output_tokens >= seq.max_new_tokens or seq.num_tokens >= self.prompts.max_model_len):
            reason = "length"
        if reason is not None and not isinstance(stop_reason, str):
            # Ended by a token or by length: flush what the detokenizer and the stop matcher held back.
            tail, matched = stops.feed(detok.finalize())
            text += tail if matched is not None else tail + stops.flush()
            if matched is not None:
                reason, stop_reason = "stop", matched
        logprobs = self._logprobs(token, row, result) if sp.logprobs is not None else None
        if reason is not None:
            return self._finish_delta(seq, reason, [token], text, logprobs, stop_reason)
        stream = self._streams[seq.request_id]
        return stream, Delta(seq.index, text, [token], seq.prompt_len, seq.num_output_tokens, logprobs)

    def _logprobs(self, token: int, row: int, result: SampleOutput) -> list[TokenLogprob]:
        decode: Callable[[int], str] = lambda t: self.tokenizer.decode([t])
        top = tuple(TopLogprob(t, decode(t), lp) for t, lp in result.top_logprobs[row])
        return [TokenLogprob(token, decode(token), float(result.logprobs[row] or 0.0), top)]

    def _finish_delta(
        self,
        seq: Sequence,
        reason: FinishReason,
        tokens: list[int],
        text: str = "",
        logprobs: list[TokenLogprob] | None = None,
        stop_reason: str | int | None = None,
    ) -> tuple[_RequestStream, Delta]:
        self.scheduler.finish(seq, reason)
        stream = self._streams[seq.request_id]
        if all(s.is_finished for s in stream.seqs):
            del self._streams[seq.request_id]
            self._stats.finished_requests += 1
        delta = Delta(seq.index, text, tokens, seq.prompt_len, seq.num_output_tokens, logprobs, reason, stop_reason)
        return stream, delta

    def _fail(self, seqs: list[Sequence], error: Exception) -> None:
        failed: list[tuple[_RequestStream, Delta | BaseException]] = []
        for request_id in {s.request_id for s in seqs}:
            stream = self._streams.pop(request_id, None)
            if stream is None:
                continue
            for seq in stream.seqs:
                self.scheduler.finish(seq, "abort")
            err = EngineError(f"The engine failed while generating: {type(error).__name__}: {error}")
            err.__cause__ = error
            failed.append((stream, err))
        self._deliver(failed)

    @staticmethod
    def _deliver(items: list[tuple[_RequestStream, Delta | BaseException]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        for stream, item in items:
            by_loop.setdefault(stream.loop, []).append((stream.queue, item))

        def put_all(pairs: list[tuple[asyncio.Queue, Any]]) -> None:
            for queue, item in pairs:
                queue.put_nowait(item)

        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(put_all, pairs)
            except RuntimeError:  # the consumer's loop is closed; nobody is listening
                pass

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
        self._deliver(pending)  # type: ignore[arg-type]
        for attr in ("runner", "cache", "model"):
            if hasattr(self, attr):
                delattr(self, attr)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
