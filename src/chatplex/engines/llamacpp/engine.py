"""The llama.cpp engine (`infer_backend: llama.cpp`): GGUF models in-process through llama-cpp-python.

Concurrency: a queue with one worker thread. llama.cpp's context holds one sequence, so requests are served
one at a time in arrival order (a request's `n` sequences one after another); requests that arrive meanwhile
wait in the queue (`stats().waiting`). Nothing else touches the context, so concurrent requests cannot corrupt
it. Between sequences the runner keeps the longest cached prompt prefix, so `n > 1` and shared system prompts
prefill once.

Prompts are rendered with chatplex's templates on the Hugging Face tokenizer read from the same GGUF, so they
equal the Hugging Face engine's token for token; llama.cpp only sees token ids. Sampling uses chatplex's own
sampler on llama.cpp's logits, so every sampling field, seeds and logprobs behave as in the other local
engines. Constrained output (`response_format`, forced tool calls) uses the same llguidance grammars as the
Hugging Face engine (chatplex.structured): each sequence's matcher masks llama.cpp's logits before chatplex samples.
A raw GBNF grammar also works, through llama.cpp's own grammar matcher: `generate(request, grammar=...)`
(`json_schema_grammar` turns a JSON schema into one).

Embeddings (`embed`): the final hidden states of the same GGUF, from a second, embedding-only llama.cpp context
opened at the first call (embedding.py). Embed calls go through the same queue and worker, between requests.

Cancellation: closing the delta stream sets a flag the worker checks before every token.

Media: images, video and audio are refused, naming the field. llama-cpp-python sees images only through a
multimodal projector (an mmproj GGUF) inside its own chat-completion handlers, which this engine's token loop
does not use; a projector given in engine_config is refused at start rather than silently ignored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import queue
import threading
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import torch

from chatplex.config import ChatplexArgs
from chatplex.embeddings import EmbeddingInput, Embeddings
from chatplex.engines.base import Engine, EngineStats, PromptPreparer
from chatplex.engines.fresh_thread import run_in_fresh_thread
from chatplex.engines.hf.pooling import causal_input_ids, causal_request, finish
from chatplex.engines.hf.sampler import SampleOutput, SamplingRow, sample
from chatplex.engines.llamacpp import embedding, loader
from chatplex.engines.llamacpp.runner import GrammarMask, LlamaRunner
from chatplex.engines.relay import relay
from chatplex.engines.sequence_text import SequenceText, stop_tokens, token_logprob
from chatplex.errors import (
    ConfigError,
    EngineClosedError,
    EngineError,
    InvalidRequestError,
    NotFoundError,
    UnsupportedFeatureError,
)
from chatplex.media import media_items
from chatplex.models.embedded import EMBEDDED_NAME
from chatplex.structured.matcher import Grammars
from chatplex.types import Delta, GenerationRequest

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    """One request waiting for, or being served by, the worker."""

    request: GenerationRequest
    prompt_ids: list[int]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    grammar: str | None = None  # GBNF, matched by llama.cpp
    matchers: list[Any] | None = None  # one llguidance TokenMatcher per sequence (request.constraint)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Call:
    """A function the worker runs between requests (embeddings), its result sent to `future`."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future

    def send(self, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():  # the caller gave up
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the caller's loop is closed; nobody is listening
            pass


def _lora_option(paths: list[str], named: dict[str, str]) -> dict[str, Any]:
    """llama.cpp applies one GGUF LoRA for the whole context (its binding's `lora_path`): a single adapter
    converted to GGUF is merged that way; anything else is a clear error rather than silently ignored."""
    if named:
        raise ConfigError(
            "lora_modules: the llama.cpp engine cannot switch adapters per request; use infer_backend huggingface "
            "or vllm, or merge the adapter.",
            param="lora_modules",
        )
    if not paths:
        return {}
    if len(paths) != 1 or not paths[0].endswith(".gguf"):
        raise ConfigError(
            "adapter_name_or_path: the llama.cpp engine takes one LoRA adapter converted to GGUF (a .gguf file, "
            "e.g. with llama.cpp's convert_lora_to_gguf.py); PEFT directories need infer_backend huggingface or vllm.",
            param="adapter_name_or_path",
        )
    if not os.path.isfile(paths[0]):
        raise ConfigError(f"adapter_name_or_path: {paths[0]!r} does not exist.", param="adapter_name_or_path")
    return {"lora_path": paths[0]}


# llama_cpp.Llama swallows unknown keyword arguments, so these would be ignored without a word.
_PROJECTOR_KEYS = ("mmproj", "clip_model_path", "chat_handler")


def _check_options(options: dict[str, Any]) -> None:
    for key in _PROJECTOR_KEYS:
        if key in options:
            raise ConfigError(
                f"engine_config.{key}: the llama.cpp engine takes text only; multimodal projectors (mmproj) are not "
                "supported. Serve image/audio models with infer_backend huggingface or vllm.",
                param=f"engine_config.{key}",
            )


def _refuse_media(request: GenerationRequest) -> None:
    """Media never reach llama.cpp here: refuse them, naming the first media field, instead of dropping them."""
    items = media_items(request)
    if items:
        param, kind = items[0]
        what = f"{kind} input" if kind != "?" else "that content part"
        raise UnsupportedFeatureError(f"{param}: the llama.cpp engine takes text only, not {what}.", param=param)


class LlamaCppEngine(Engine):
    backend = "llama.cpp"
    supports_constraints = True  # response_format and forced tool calls, via chatplex.structured (llguidance)

    def __init__(self, args: ChatplexArgs) -> None:
        self.args = args
        self.path = loader.gguf_file(args.model.model_name_or_path)
        self._name = EMBEDDED_NAME if args.model.model_name_or_path is None else os.path.basename(self.path)[:-5]
        # Free-form llama.cpp settings (n_threads, n_batch, n_gpu_layers, flash_attn...).
        self.options: dict[str, Any] = dict(args.model.engine_config or {})
        _check_options(self.options)
        self.options.update(_lora_option(args.model.adapter_paths, args.model.lora_module_paths))
        self._jobs: queue.Queue[_Job | _Call | None] = queue.Queue()
        self._embedder: embedding.LlamaEmbedder | None = None  # opened at the first embed call
        self._thread: threading.Thread | None = None
        self._closing = False
        self._running = 0
        self._current: _Job | None = None
        self._stats = EngineStats()

    # ---- loading -------------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int | None:
        return self.runner.n_vocab if hasattr(self, "runner") else None

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._work, name="chatplex-llamacpp", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        margs = self.args.model
        self.tokenizer, llama = loader.load(self.path, margs.max_model_len, self.options)
        self.runner = LlamaRunner(llama)
        self.prompts = PromptPreparer.for_model(margs, self.tokenizer, self.runner.n_ctx)
        eos = llama.token_eos()
        stop_words = self.prompts.template.stop_words
        self.eos_ids, self.template_stops = stop_tokens(eos if eos >= 0 else None, self.tokenizer, stop_words)
        self.grammars = Grammars(self.tokenizer, self.runner.n_vocab, self.eos_ids)

    # ---- capabilities --------------------------------------------------------------------------------------
    @staticmethod
    def json_schema_grammar(schema: dict[str, Any] | None = None) -> str:
        """GBNF for JSON matching `schema` (any JSON object when None), for `generate(request, grammar=...)`."""
        from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

        if schema is None:
            return JSON_GBNF
        try:
            return json_schema_to_gbnf(json.dumps(schema))
        except Exception as e:  # the converter raises plain exceptions for schemas it cannot express
            raise InvalidRequestError(
                f"response_format: cannot turn the JSON schema into a grammar: {e}", param="response_format"
            ) from e

    # ---- the asyncio side ----------------------------------------------------------------------------------
    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompts.prompt_ids(request))

    async def generate(self, request: GenerationRequest, *, grammar: str | None = None) -> AsyncGenerator[Delta, None]:
        """Stream the request's deltas; `grammar` (GBNF) constrains every sequence's output."""
        if self._closing or self._thread is None:
            raise EngineClosedError("The engine is not running.")
        if request.adapter is not None:
            raise NotFoundError(
                f"model: the llama.cpp engine serves one model; adapter {request.adapter!r} is not available.",
                param="model",
                code="model_not_found",
            )
        _refuse_media(request)
        constraint = request.constraint if grammar is None else None  # a GBNF grammar replaces it
        matchers = await self.grammars.matchers(constraint, request.sampling.n)
        job = _Job(
            request, self.prompts.prompt_ids(request), asyncio.get_running_loop(), asyncio.Queue(), grammar, matchers
        )
        if grammar is not None:
            GrammarMask(self.runner.llama, grammar).close()  # a bad grammar fails here, not in the worker
        self._jobs.put(job)
        async with aclosing(relay(job.out, request.sampling.n, job.cancelled.set)) as deltas:
            async for delta in deltas:
                yield delta

    async def embed(
        self,
        inputs: list[EmbeddingInput],
        *,
        pooling: str | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> Embeddings:
        """llama.cpp's final hidden states of the served model, pooled at the last token ("last", the default) or
        averaged ("mean") and L2-normalised, as the Hugging Face engine does; computed on the worker thread."""
        if self._closing or self._thread is None:
            raise EngineClosedError("The engine is not running.")
        hidden_size = self.runner.llama.n_embd()
        mode = causal_request(pooling, dimensions, prompt_name, hidden_size, self._name)
        ids = causal_input_ids(self.tokenizer, inputs, self.prompts.max_model_len)
        loop = asyncio.get_running_loop()
        call = _Call(lambda: self._embedder_on_worker().embed(ids, mode), loop, loop.create_future())
        self._jobs.put(call)
        vectors = await call.future
        return Embeddings(finish(vectors, True, dimensions), sum(map(len, ids)))

    def _embedder_on_worker(self) -> embedding.LlamaEmbedder:
        if self._embedder is None:  # most deployments never embed: open the second context only when asked
            self._embedder = embedding.LlamaEmbedder(self.path, self.runner.n_ctx, self.options)
        return self._embedder

    def stats(self) -> EngineStats:
        return dataclasses.replace(self._stats, running=self._running, waiting=self._jobs.qsize())

    # ---- the worker thread ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if isinstance(job, _Call):
                self._call(job)
                continue
            if job.cancelled.is_set():
                self._stats.aborted_requests += 1
                continue
            self._running, self._current = 1, job
            try:
                self._serve(job)
            except Exception as e:  # fail this request, keep serving the others
                logger.exception("llama.cpp generation failed")
                err = EngineError(f"llama.cpp failed while generating: {type(e).__name__}: {e}")
                err.__cause__ = e
                self._send(job, err)
            finally:
                self._running, self._current = 0, None

    def _call(self, call: _Call) -> None:
        self._running = 1
        try:
            call.send(call.fn())
        except Exception as e:  # fail this call, keep serving the others
            logger.exception("llama.cpp embedding failed")
            err = EngineError(f"llama.cpp failed while embedding: {type(e).__name__}: {e}")
            err.__cause__ = e
            call.send(error=err)
        finally:
            self._running = 0

    def _serve(self, job: _Job) -> None:
        self._stats.prompt_tokens += len(job.prompt_ids)
        for index in range(job.request.sampling.n):
            if not self._run_sequence(job, index):
                self._stats.aborted_requests += 1
                return
        self._stats.finished_requests += 1

    def _run_sequence(self, job: _Job, index: int) -> bool:
        """Generate one sequence; False if the request was cancelled."""
        sp = job.request.sampling
        prompt = job.prompt_ids
        max_new = self.prompts.max_new_tokens(len(prompt), job.request)
        generator = torch.Generator().manual_seed(sp.seed + index) if sp.seed is not None and not sp.greedy else None
        text = SequenceText(self.tokenizer, sp, self.eos_ids, self.template_stops)
        mask = GrammarMask(self.runner.llama, job.grammar) if job.grammar is not None else None
        matcher = job.matchers[index] if job.matchers is not None else None
        tokens: list[int] = []
        try:
            logits, _ = self.runner.start(prompt)
            while True:
                if job.cancelled.is_set():
                    return False
                if mask is not None:
                    logits = mask.apply(logits)
                suppress = tuple(self.eos_ids | set(sp.stop_token_ids)) if len(tokens) < sp.min_new_tokens else ()
                allowed = matcher.allowed() if matcher is not None else None
                row = SamplingRow(sp, prompt + tokens, len(prompt), generator, suppress, allowed)
                result = sample(logits, [row])
                token = result.token_ids[0]
                tokens.append(token)
                self._stats.generated_tokens += 1
                self._stats.steps += 1
                if mask is not None:
                    mask.accept(token)
                complete = False
                if matcher is not None:
                    matcher.accept(token)
                    complete = matcher.is_finished  # the grammar is complete: nothing more may follow
                delta = self._delta(job, index, token, result, text, len(tokens), max_new, complete)
                self._send(job, delta)
                if delta.finish_reason is not None:
                    return True
                logits = self.runner.step(token)
        finally:
            if mask is not None:
                mask.close()

    def _delta(
        self,
        job: _Job,
        index: int,
        token: int,
        result: SampleOutput,
        text: SequenceText,
        num_out: int,
        max_new: int,
        complete: bool = False,
    ) -> Delta:
        at_limit = num_out >= max_new or len(job.prompt_ids) + num_out >= self.prompts.max_model_len
        piece, reason, stop_reason = text.add(token, at_limit=at_limit, complete=complete)
        logprobs = None
        if job.request.sampling.logprobs is not None:
            logprobs = [token_logprob(self.tokenizer, token, result.logprobs[0] or 0.0, result.top_logprobs[0])]
        return Delta(
            index=index,
            text=piece,
            token_ids=[token],
            prompt_tokens=len(job.prompt_ids),
            completion_tokens=num_out,
            logprobs=logprobs,
            finish_reason=reason,
            stop_reason=stop_reason,
        )

    @staticmethod
    def _send(job: _Job, item: Delta | BaseException) -> None:
        try:
            job.loop.call_soon_threadsafe(job.out.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed; nobody is listening
            job.cancelled.set()

    # ---- shutdown ------------------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        pending: list[_Job | _Call] = []
        while True:  # requests still waiting are refused, not served
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        current = self._current
        if current is not None:  # stop the request being served at its next token
            current.cancelled.set()
            pending.append(current)
        for job in pending:
            closed = EngineClosedError("The engine was closed.")
            if isinstance(job, _Call):
                job.send(error=closed)
            else:
                self._send(job, closed)
        if self._thread is not None:
            self._jobs.put(None)
            await run_in_fresh_thread(self._thread.join)
        if hasattr(self, "runner"):
            self.runner.close()
            del self.runner
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
