"""The vLLM engine (`infer_backend: vllm`): vLLM's `AsyncLLM` in-process, behind chatplex's Engine protocol.

Loops: `AsyncLLM` belongs to the event loop it first runs on, but chatplex calls `generate` from any loop (the
ChatModel's background loop, a server's, a test's). So the engine keeps one loop thread of its own for vLLM;
each request's sequences run there as tasks and hand their deltas back to the caller's loop.

Prompts are rendered with chatplex's templates and tokenizer and reach vLLM as token ids; a request's images and
audio go with them as `multi_modal_data` (see `media.py`), and vLLM's processor expands their placeholders. Each of
the `n` sequences is its own vLLM request (seed + index, as in the other local engines). vLLM samples; chatplex
decides where a sequence ends and what its text is (see `output.py`). Closing the delta stream cancels the
sequences' tasks, and vLLM aborts a request whose `generate` is cancelled or closed.

More than one GPU or machine runs through vLLM itself: chatplex's parallel keys (engines/parallel.py) become
`AsyncEngineArgs`, checked first; `distributed.py` prepares the environment and runs the workers of nodes 1...
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncGenerator
from concurrent.futures import Future
from contextlib import aclosing
from typing import Any

from vllm.inputs import TokensPrompt
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM

from chatplex._loop import BackgroundLoop
from chatplex.config import ChatplexArgs
from chatplex.embeddings import EmbeddingInput, Embeddings
from chatplex.engines import parallel
from chatplex.engines.base import Engine, EngineStats, PromptPreparer
from chatplex.engines.checkpoints import check_one_label
from chatplex.engines.fresh_thread import run_in_fresh_thread
from chatplex.engines.hf import encoder, loader
from chatplex.engines.relay import relay
from chatplex.engines.sequence_text import stop_tokens
from chatplex.engines.vllm import distributed, params, scoring
from chatplex.engines.vllm import pooling as vllm_pooling
from chatplex.engines.vllm.media import MediaInputs
from chatplex.engines.vllm.output import SequenceOutput
from chatplex.engines.vllm.stats import SchedulerCounters
from chatplex.errors import ChatplexError, ConfigError, EngineClosedError, EngineError, UnsupportedFeatureError
from chatplex.media import media_items
from chatplex.structured.matcher import special_token_ids
from chatplex.types import Delta, GenerationRequest

logger = logging.getLogger(__name__)


class VLLMEngine(Engine):
    backend = "vllm"
    supports_constraints = True  # response_format and forced tool calls, on vLLM's guidance backend (params.py)

    def __init__(self, args: ChatplexArgs) -> None:
        self.args = args
        self.model_dir, _, self._name = loader.model_source(args.model)
        self._loras = params.Adapters(params.adapter_paths(args.model), dict(args.model.lora_module_paths))
        self._loop: BackgroundLoop | None = None
        self._llm: AsyncLLM | None = None
        self._closing = False
        self._counters = SchedulerCounters()
        self._encoder: vllm_pooling.Encoder | None = None  # an embedding model or cross-encoder (pooling.py)
        self._stats = EngineStats()
        self._in_flight = 0
        # Each running request's way back to its caller, so close() can tell the callers still waiting.
        self._callers: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}

    # ---- loading -------------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int | None:
        return self._vocab_size if hasattr(self, "_vocab_size") else None

    async def start(self) -> None:
        margs = self.args.model
        self._kind = encoder.pooling_task(margs)  # "embed" / "rerank": detected as the Hugging Face engine does
        if self._kind is not None and self._loras.enabled:
            vllm_pooling.refuse_adapters(self._kind)
        spec = vllm_pooling.read(self._kind, self.model_dir) if self._kind is not None else None
        self._pooling = self._kind is None and scoring.pooling(loader.score_format(margs))
        if self._pooling and self._loras.enabled:
            # vLLM's pooling runner would score with the base weights and say nothing.
            param = "adapter_name_or_path" if margs.adapter_name_or_path else "lora_modules"
            raise ConfigError(
                f"{param}: the vllm engine scores with a classifier's own weights only; merge the adapter into the "
                "model (peft's merge_and_unload) or use infer_backend huggingface, which merges it at load.",
                param=param,
            )
        self.tokenizer = await asyncio.to_thread(loader.load_tokenizer, margs)
        on_cpu = current_platform.is_cpu()
        engine_args = params.engine_args(
            margs,
            self.model_dir,
            on_cpu,
            self._loras.enabled,
            pooling=self._pooling,
            encoder=self._kind is not None,
        )
        layout = await asyncio.to_thread(distributed.prepare, margs, engine_args, self.model_dir, on_cpu)
        if layout.is_worker_node:
            raise parallel.worker_node_error(layout)
        self._lora_enabled = bool(engine_args.enable_lora)
        self._loop = BackgroundLoop("chatplex-vllm")
        with distributed.worker_environment(layout, on_cpu):
            self._llm = await self._on_vllm(self._create(engine_args))
        model_config = self._llm.model_config
        if self._pooling:
            check_one_label(model_config.hf_config)
        self._vocab_size = model_config.get_vocab_size()
        if self._kind is not None and spec is not None:
            if self._kind == "rerank":
                check_one_label(model_config.hf_config)
            self._encoder = vllm_pooling.Encoder(self._kind, spec, self.tokenizer, model_config.max_model_len)
            self._hidden_size = model_config.get_hidden_size()
            logger.info("Loaded %s with vLLM (%s, length %d)", self._name, self._kind, self._encoder.max_len)
            return
        self.prompts = PromptPreparer.for_model(margs, self.tokenizer, model_config.max_model_len)
        self._special_tokens = special_token_ids(self.tokenizer)  # for tool-call grammars (params.py)
        self.eos_ids, self.text_stops = self._stop_tokens(self.prompts.template.stop_words)
        self.media = MediaInputs.from_llm(self._llm, margs.media_policy(), self._name)
        logger.info("Loaded %s with vLLM (context %d)", self._name, model_config.max_model_len)

    async def _create(self, engine_args: Any) -> AsyncLLM:
        # On vLLM's own loop: the engine's output handler task is created on the loop it is built on.
        return AsyncLLM.from_engine_args(engine_args, stat_loggers=[self._counters.logger_factory()])

    def _stop_tokens(self, stop_words: tuple[str, ...]) -> tuple[frozenset[int], tuple[str, ...]]:
        gen_eos = self._running().model_config.try_get_generation_config().get("eos_token_id")
        return stop_tokens(gen_eos, self.tokenizer, stop_words)

    # ---- requests ------------------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return self._loras.names

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter under `name` (needs LoRA on at start: an adapter configured, or enable_lora)."""
        if self._pooling or self._encoder is not None:
            raise UnsupportedFeatureError(
                f"{self._name} pools with its own weights; it loads no adapters."
                if self._encoder
                else "A reward model scores with its own weights; it loads no adapters.",
                param="lora_name",
            )
        if not self._lora_enabled:
            raise UnsupportedFeatureError(
                "lora_path: this vLLM engine was started without LoRA; start it with lora_modules, "
                "adapter_name_or_path or vllm_config {enable_lora: true}.",
                param="lora_path",
            )
        lora = self._loras.add(name, path)
        try:
            await self._on_vllm(self._running().add_lora(lora))
        except BaseException:
            self._loras.remove(name)
            raise

    async def unload_adapter(self, name: str) -> None:
        lora = self._loras.remove(name)
        await self._on_vllm(self._running().remove_lora(lora.lora_int_id))

    def _running(self) -> AsyncLLM:
        if self._closing or self._llm is None:
            raise EngineClosedError("The engine is not running.")
        return self._llm

    async def _on_vllm(self, coro: Any) -> Any:
        """Run a coroutine on vLLM's loop and wait for it from the caller's."""
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop.loop))

    @property
    def is_reward_model(self) -> bool:
        return getattr(self, "_pooling", False)

    async def score(
        self, inputs: list[Any], max_length: int | None = None, truncation_side: str = "right"
    ) -> list[float]:
        """Raw scores, one per input (a string, or a conversation rendered with the template), batched by vLLM."""
        if not self.is_reward_model:
            return await super().score(inputs, max_length, truncation_side)
        if self._closing or self._llm is None:
            raise EngineClosedError("The engine is not running.")
        ids = scoring.token_ids(self.prompts, inputs, max_length, truncation_side)
        return await self._on_vllm(scoring.score_ids(self._llm, ids))

    # ---- embeddings and rerank (pooling.py) ----------------------------------------------------------------
    def _serving(self, kind: str) -> vllm_pooling.Encoder:
        if self._closing or self._llm is None:
            raise EngineClosedError("The engine is not running.")
        if self._encoder is None:
            raise vllm_pooling.not_started_for(kind, self._name)
        if self._encoder.kind != kind:
            what = (
                "an embedding model: it serves /v1/embeddings"
                if kind == "rerank"
                else "a cross-encoder: it serves /v1/rerank"
            )
            raise UnsupportedFeatureError(f"{self._name} is {what}.", param="model")
        return self._encoder

    async def embed(
        self,
        inputs: list[EmbeddingInput],
        *,
        pooling: str | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> Embeddings:
        """An embedding model's vectors, pooled and normalised by vLLM as its sentence-transformers files say."""
        model = self._serving("embed")
        ids = model.embedding_ids(inputs, pooling, dimensions, prompt_name, self._hidden_size)
        vectors = await self._on_vllm(vllm_pooling.embed(self._running(), ids, dimensions))
        return Embeddings(vectors, sum(map(len, ids)))

    async def rerank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        model = self._serving("rerank")
        pairs = [model.pair(query, doc) for doc in documents]
        scores = await self._on_vllm(vllm_pooling.rerank(self._running(), pairs))
        return scores, sum(len(ids) for ids, _ in pairs)

    @property
    def local_tokenizer(self) -> Any:
        return self.tokenizer if self._encoder is not None else super().local_tokenizer

    @property
    def max_model_len(self) -> int | None:
        return self._encoder.max_len if self._encoder is not None else super().max_model_len

    def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        if self._encoder is not None:
            return None  # it does not chat (generate says why)
        return len(self.prompts.prompt_ids(request))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if self._closing or self._llm is None or self._loop is None:
            raise EngineClosedError("The engine is not running.")
        if self._encoder is not None:
            role = "an embedding model" if self._encoder.kind == "embed" else "a cross-encoder"
            raise UnsupportedFeatureError(
                f"{self._name} is {role} (task: {self._kind}): it cannot chat or complete.", param="model"
            )
        if self.is_reward_model:
            raise UnsupportedFeatureError(
                f"{self._name} is a reward model: it scores, it does not generate.", param="model"
            )
        media: dict[str, list[Any]] | None = None
        items = media_items(request)
        if items:
            self.media.check(items)  # before loading anything
            # Fetching and decoding media is blocking work: keep it off the caller's event loop.
            prompt_ids, media = await asyncio.to_thread(self.media.prepare, self.prompts, request)
        else:
            prompt_ids = self.prompts.prompt_ids(request)
        lora = self._loras.pick(request.adapter)
        structured = params.structured_outputs(request.constraint, self._special_tokens)
        caller = asyncio.get_running_loop()
        out: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        n = request.sampling.n
        # Unique per call: chatplex request ids need not be unique, vLLM's must.
        base_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        tasks: list[Future] = [
            asyncio.run_coroutine_threadsafe(
                self._run_sequence(
                    request, prompt_ids, media, index, f"{base_id}-{index}", lora, structured, caller, out
                ),
                self._loop.loop,
            )
            for index in range(n)
        ]
        self._in_flight += 1
        self._callers[base_id] = (caller, out)
        self._stats.prompt_tokens += len(prompt_ids)

        def abandon() -> None:
            for task in tasks:
                task.cancel()  # cancels vLLM's generate, which aborts the request in the engine core
            self._stats.aborted_requests += 1

        try:
            async with aclosing(relay(out, n, abandon)) as deltas:
                async for delta in deltas:
                    self._stats.generated_tokens += len(delta.token_ids)
                    yield delta
            self._stats.finished_requests += 1
        finally:
            self._in_flight -= 1
            self._callers.pop(base_id, None)

    async def _run_sequence(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        media: dict[str, list[Any]] | None,
        index: int,
        vllm_id: str,
        lora: Any,
        structured: Any,
        caller: asyncio.AbstractEventLoop,
        out: asyncio.Queue,
    ) -> None:
        """On vLLM's loop: stream one sequence, sending each delta (or the error) to the caller's queue."""
        sp = request.sampling
        max_new = self.prompts.max_new_tokens(len(prompt_ids), request)
        seq = SequenceOutput(index, len(prompt_ids), sp, max_new, self.eos_ids, self.text_stops, self.tokenizer)
        vparams = params.sampling_params(sp, index, max_new, seq.stop_token_ids, structured)
        assert self._llm is not None
        prompt = TokensPrompt(prompt_token_ids=prompt_ids)
        if media:
            prompt["multi_modal_data"] = media
        stream = self._llm.generate(prompt, vparams, vllm_id, lora_request=lora)
        try:
            async for result in stream:
                if media and result.prompt_token_ids is not None:
                    seq.prompt_len = len(result.prompt_token_ids)  # with each item's placeholder expanded
                completion = result.outputs[0]
                delta = seq.add(completion.token_ids, completion.logprobs, completion.finish_reason)
                cached = result.num_cached_tokens  # vLLM's own prefix cache (None or -1 where it does not say)
                delta.cached_tokens = cached if cached is not None and cached >= 0 else None
                _send(caller, out, delta)
                if seq.finished:
                    break
        except asyncio.CancelledError:
            raise
        except ChatplexError as e:
            _send(caller, out, e)
        except Exception as e:  # fail this request, keep serving the others
            logger.exception("vLLM generation failed")
            err = EngineError(f"vLLM failed while generating: {type(e).__name__}: {e}")
            err.__cause__ = e
            _send(caller, out, err)
        finally:
            # Ended early by a stop string, or cancelled: closing vLLM's stream aborts its request.
            await stream.aclose()

    def stats(self) -> EngineStats:
        counters = self._counters
        running, waiting = (counters.running, counters.waiting) if self._in_flight else (0, 0)
        return dataclasses.replace(self._stats, running=running, waiting=waiting, max_batch_size=counters.max_running)

    # ---- shutdown ------------------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        llm, loop = self._llm, self._loop
        self._llm = None
        for caller, out in self._callers.values():
            _send(caller, out, EngineClosedError("The engine was closed."))
        if llm is not None and loop is not None:
            await self._on_vllm(_shutdown(llm))
        if loop is not None:
            await run_in_fresh_thread(loop.stop)


async def _shutdown(llm: AsyncLLM) -> None:
    llm.shutdown()


def _send(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: Delta | BaseException) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:  # the caller's loop is closed; nobody is listening
        pass
