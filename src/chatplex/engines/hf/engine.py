"""The Hugging Face engine: request streams in, one engine thread batching every live sequence, deltas out.

This module is the asyncio side: `generate` and `score` check and render a request, hand its sequences to the
engine thread (core.py) and await their deltas on a queue. The engine thread owns the scheduler, the cache and
the model, and runs steps (steps.py: schedule -> launch -> process outputs). docs/ARCHITECTURE.md draws the
threads and a request's path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from functools import partial
from typing import Any

import torch

from chatplex.config import ChatplexArgs
from chatplex.embeddings import EmbeddingInput, Embeddings
from chatplex.engines.base import Engine, EngineStats, PromptPreparer
from chatplex.engines.fresh_thread import run_in_fresh_thread
from chatplex.engines.hf import embedding, encoder, loader, lora, prefix_keys, scoring, setup, switch_interval
from chatplex.engines.hf import pooling as pooling_mod
from chatplex.engines.hf.core import EngineCore
from chatplex.engines.hf.output_processor import OutputProcessor
from chatplex.engines.hf.sequence import Sequence
from chatplex.engines.hf.streams import RequestStream, deliver
from chatplex.engines.relay import is_final, relay
from chatplex.errors import (
    ContextLengthExceededError,
    EngineClosedError,
    EngineOverloadedError,
    NotFoundError,
    UnsupportedFeatureError,
)
from chatplex.media import media_items, text_only_error
from chatplex.structured.matcher import Grammars
from chatplex.types import Delta, GenerationRequest, SamplingParams, new_request_id

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
        self.parts: setup.EngineParts | None = (
            None  # model, cache, scheduler, runner...: set by start, dropped by close
        )
        self.core: EngineCore | None = None  # the engine thread's side, while it runs
        # An embedding model or cross-encoder runs whole on its own (encoder.py), with no parts and no core.
        self.encoder: encoder.EncoderModel | None = None
        self.default_adapter: str | None = None  # the unmerged adapter_name_or_path, for requests naming none
        self._holds_switch_interval = False  # a CUDA engine lowers the GIL switch interval while it runs
        self._active_requests = 0
        self._stats = EngineStats()
        self._closed = False

    # ---- loading -------------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int | None:
        if self.encoder is not None:  # token-id inputs to an embedding model are checked against it too
            return int(self.encoder.model.config.vocab_size)
        return self.parts.model.config.get_text_config().vocab_size if self.parts is not None else None

    async def start(self) -> None:
        kind = encoder.pooling_task(self.args.model)
        if kind is not None:
            self.encoder = await run_in_fresh_thread(encoder.EncoderModel.load, self.args.model, kind)
            self.device, self.tokenizer = self.encoder.device, self.encoder.tokenizer
            self.dtype = next(self.encoder.model.parameters()).dtype
            return
        parts = await run_in_fresh_thread(setup.build, self.args.model, self._name)
        self.parts, self._name, self.default_adapter = parts, parts.name, parts.default_adapter
        # What the model was loaded as stays readable after close (benchmarks and callers compare with it).
        self.device, self.dtype, self.tokenizer = parts.device, parts.dtype, parts.tokenizer
        self.prompts, self.eos_ids = parts.prompts, parts.eos_ids
        vocab_size = parts.model.config.get_text_config().vocab_size
        self.grammars = Grammars(parts.tokenizer, vocab_size, parts.eos_ids)
        self.output = OutputProcessor(parts.tokenizer, parts.eos_ids, parts.template_stops, parts.prompts.max_model_len)
        if self.device.type == "cuda":
            # The engine thread releases the GIL in every device call (graph launch, copies, event waits) and must
            # get it back at once to keep the GPU fed; at Python's default 5 ms a busy event loop thread (one
            # coroutine wake per stream per step) holds it that long each time (switch_interval.py).
            switch_interval.lower(GIL_SWITCH_INTERVAL_S)
            self._holds_switch_interval = True
        self.core = EngineCore(parts, self.output, self._stats, async_scheduling=self.args.model.async_scheduling)
        self.core.start()

    def _loaded(self) -> setup.EngineParts:
        if self.parts is None:
            raise EngineClosedError("The engine is not running.")
        return self.parts

    def _running(self) -> EngineCore:
        if self.core is None or self._closed:
            raise EngineClosedError("The engine is not running.")
        return self.core

    # The loaded parts that hold the weights, the cache and the step's state (setup.EngineParts), by name, for
    # tests and benchmarks that look in; close() lets them all go at once.
    model = property(lambda self: self._loaded().model)
    cache = property(lambda self: self._loaded().cache)
    blocks = property(lambda self: self._loaded().blocks)
    scheduler = property(lambda self: self._loaded().scheduler)
    runner = property(lambda self: self._loaded().runner)
    multimodal = property(lambda self: self._loaded().multimodal)

    @property
    def phase_seconds(self) -> dict[str, float]:
        """Seconds the engine thread spent per phase of its steps (steps.PhaseTimer)."""
        return self._running().timer.seconds

    # ---- requests ------------------------------------------------------------------------------------------
    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        self._refuse_if_encoder("renders no chat prompts")
        return len(self.prompts.prompt_ids(request))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        self._refuse_if_encoder("cannot chat or complete")
        core = self._running()
        if self.is_reward_model:
            raise UnsupportedFeatureError(
                f"{self._name} is a reward model: it scores (/v1/score, get_scores) and cannot chat or complete.",
                param="model",
            )
        adapter = lora.resolve_adapter(request.adapter, self.adapters, self.default_adapter)
        media = None
        items = media_items(request)
        if items:
            if self.multimodal is None:
                raise text_only_error(items[0][0], self._name)
            # Decoding, fetching, preprocessing and hashing media is blocking work: keep it off the event loop.
            prompt_ids, media, key = await run_in_fresh_thread(self._prepare_media, request, adapter)
        else:
            prompt_ids, key = self.prompts.prompt_ids(request), prefix_keys.cache_key(adapter)
        matchers = await self.grammars.matchers(request.constraint, request.sampling.n)
        self._check_cache_holds(len(prompt_ids) + 1, "The prompt", "messages")
        margs = self.args.model
        if (
            margs.max_waiting_requests is not None
            and self._active_requests >= margs.max_num_seqs + margs.max_waiting_requests
        ):
            raise EngineOverloadedError(
                f"The engine is full ({self._active_requests} requests running or waiting); retry shortly."
            )
        seqs = self._new_sequences(request, prompt_ids, matchers)
        limit = prefix_keys.cache_limit(media) if media is not None else None
        for seq in seqs:
            seq.adapter, seq.media, seq.cache_key, seq.cache_limit = adapter, media, key, limit
        self._active_requests += 1
        try:
            async with aclosing(self._stream(core, request.request_id, seqs, is_final)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            self._active_requests -= 1

    def _prepare_media(self, request: GenerationRequest, adapter: str | None) -> tuple[list[int], Any, bytes]:
        prompt_ids, media = self.multimodal.prepare(self.prompts, request)
        return prompt_ids, media, prefix_keys.cache_key(adapter, media)

    @staticmethod
    def _stream(
        core: EngineCore, request_id: str, seqs: list[Sequence], is_last: Callable[[Any], bool]
    ) -> AsyncGenerator[Any, None]:
        """Hand a request's sequences to the engine thread; the stream of what it sends back until each sequence's
        last item (`is_last`). A consumer that stops early aborts the request."""
        stream = RequestStream(asyncio.get_running_loop(), asyncio.Queue(), seqs)
        core.add(request_id, stream)
        return relay(stream.queue, len(seqs), lambda: core.abort(request_id), is_last)

    def _new_sequences(
        self, request: GenerationRequest, prompt_ids: list[int], matchers: list[Any] | None
    ) -> list[Sequence]:
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

    def _check_cache_holds(self, tokens: int, what: str, param: str) -> None:
        """A sequence longer than the whole KV cache would wait for blocks forever: refuse it at admission."""
        if tokens > self.blocks.capacity_tokens:
            raise ContextLengthExceededError(
                f"{what} has {tokens} tokens but the KV cache holds {self.blocks.capacity_tokens}; "
                "raise kv_cache_memory_gb or shorten it.",
                param=param,
            )

    # ---- reward scores -------------------------------------------------------------------------------------
    @property
    def is_reward_model(self) -> bool:
        return self.parts is not None and self.parts.runner.score_head is not None

    async def score(
        self, inputs: list[Any], max_length: int | None = None, truncation_side: str = "right"
    ) -> list[float]:
        """Raw scores, one per input (a string, or a conversation rendered with the template), in one batch."""
        self._refuse_if_encoder("does not score with a reward head")
        if not self.is_reward_model:
            return await super().score(inputs, max_length, truncation_side)
        core = self._running()
        ids = scoring.batch_input_ids(self.prompts, inputs, max_length, truncation_side)
        for i, x in enumerate(ids):
            self._check_cache_holds(len(x), f"batch_input[{i}]", "batch_input")
        request_id = new_request_id("score")
        seqs = [Sequence(request_id, i, x, len(x), SamplingParams(), 0) for i, x in enumerate(ids)]
        key = prefix_keys.cache_key(None)  # a reward model scores with merged adapters only
        for seq in seqs:
            seq.cache_key = key
        scores = [0.0] * len(ids)
        async with aclosing(self._stream(core, request_id, seqs, lambda _: True)) as results:
            async for index, value in results:  # each sequence sends one (index, score) and finishes
                scores[index] = value
        return scores

    # ---- embeddings, rerank, tokenizer ---------------------------------------------------------------------
    def _refuse_if_encoder(self, what: str) -> None:
        if self.encoder is not None:
            serves = "/v1/embeddings" if self.encoder.kind == "embed" else "/v1/rerank"
            role = "an embedding model" if self.encoder.kind == "embed" else "a cross-encoder"
            raise UnsupportedFeatureError(f"{self._name} is {role}: it serves {serves} and {what}.", param="model")

    async def embed(
        self,
        inputs: list[EmbeddingInput],
        *,
        pooling: str | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> Embeddings:
        """An embedding model's own vectors; a causal LM's final hidden states pooled ("last" or "mean"),
        L2-normalised, computed on the engine thread."""
        if self.encoder is not None:
            if self.encoder.kind != "embed":
                self._refuse_if_encoder("does not embed")
            return await run_in_fresh_thread(self.encoder.embed, inputs, pooling, dimensions, prompt_name)
        core = self._running()
        if self.multimodal is not None:
            raise UnsupportedFeatureError(f"{self._name}: embeddings of media models are not supported.", param="model")
        hidden_size = self.model.config.get_text_config().hidden_size
        mode = pooling_mod.causal_request(pooling, dimensions, prompt_name, hidden_size, self._name)
        ids = pooling_mod.causal_input_ids(self.prompts.tokenizer, inputs, self.prompts.max_model_len)
        limit = self._loaded().scheduler.max_num_batched_tokens
        vectors = await core.call(partial(embedding.embed, self.runner, ids, mode, limit, self.default_adapter))
        return Embeddings(pooling_mod.finish(vectors, True, dimensions), sum(map(len, ids)))

    async def rerank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        if self.encoder is None or self.encoder.kind != "rerank":
            if self.encoder is not None:
                self._refuse_if_encoder("does not rerank")
            return await super().rerank(query, documents)
        return await run_in_fresh_thread(self.encoder.rerank, query, documents)

    @property
    def local_tokenizer(self) -> Any:
        return self.encoder.tokenizer if self.encoder is not None else super().local_tokenizer

    @property
    def max_model_len(self) -> int | None:
        return self.encoder.max_len if self.encoder is not None else super().max_model_len

    @property
    def media_kinds(self) -> tuple[str, ...]:
        return tuple(self.parts.multimodal.kinds) if self.parts is not None and self.parts.multimodal else ()

    @property
    def score_label(self) -> str:
        id2label = getattr(self.model.config, "id2label", None) if self.parts is not None else None
        return str((id2label or {0: "LABEL_0"}).get(0, "LABEL_0"))

    # ---- LoRA adapters -------------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        loaded = self.parts.runner.lora if self.parts is not None else None
        return [n for n in loaded.names if n != self.default_adapter] if loaded is not None else []

    @property
    def adapter_paths(self) -> dict[str, str]:
        loaded = self.parts.runner.lora if self.parts is not None else None
        return dict(loaded.paths) if loaded is not None else {}

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter at run time (between engine steps)."""
        core = self._running_with_adapters()
        await core.call(partial(lora.load_at_run_time, self.runner, self.args.model.max_loras, name, path))

    async def unload_adapter(self, name: str) -> None:
        core = self._running_with_adapters()
        if name not in self.adapters:
            raise NotFoundError(f"The LoRA adapter {name!r} is not loaded.", param="lora_name", code="model_not_found")
        await core.call(partial(self._unload, name, core))

    def _unload(self, name: str, core: EngineCore) -> None:
        lora.unload_at_run_time(self.runner, name, core.live_sequences())
        # An adapter loaded later under the same name has other weights: its blocks must not be found again.
        self.blocks.reset_prefix_cache()

    def _running_with_adapters(self) -> EngineCore:
        core = self._running()
        if self.is_reward_model:
            raise UnsupportedFeatureError(
                "A reward model scores with merged adapters; it loads none at run time.", param="lora_name"
            )
        return core

    # ---- counters and shutdown -----------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """A snapshot of the counters (read from another thread: good enough for metrics and tests)."""
        if self.parts is None:
            return dataclasses.replace(self._stats)
        return dataclasses.replace(
            self._stats,
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            preemptions=self.scheduler.num_preemptions,
            prefix_cache_queries=self.blocks.queried_tokens,
            prefix_cache_hits=self.blocks.hit_tokens,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.core is not None:
            open_streams = await run_in_fresh_thread(self.core.stop)
            deliver([(stream, EngineClosedError("The engine was closed.")) for stream in open_streams])
        self._stats = self.stats()  # the scheduler's counters, kept for who reads them after close
        self.parts = self.encoder = None  # the model, its cache and the runner go with it
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self._holds_switch_interval:
            self._holds_switch_interval = False
            switch_interval.release()
