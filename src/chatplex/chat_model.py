"""The facade: `ChatModel` puts one chat interface over any engine.

Async methods do the work; each sync method is a thin twin that runs its async half on one background loop.
Streaming is the primitive: `agenerate` yields the engine's deltas; everything else is built on it.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import functools
import weakref
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from typing import Any, Self

from chatplex._loop import BackgroundLoop
from chatplex.config import ChatplexArgs, load_args
from chatplex.embeddings import (
    Embeddings,
    Reranked,
    check_token_ids,
    check_top_n,
    embedding_inputs,
    ranked,
    rerank_documents,
)
from chatplex.engines import create_engine
from chatplex.engines.base import Engine, EngineStats
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from chatplex.messages import normalize_messages, validate_tools
from chatplex.output_parsing import (
    keeps_special_tokens,
    openai_tool_calls,
    parse_deltas,
    reply_parsers,
    tool_parser_name,
)
from chatplex.sampling import build_sampling_params
from chatplex.structured import request_constraint
from chatplex.templates import ChatTemplate
from chatplex.tokens import check_token_list, token_ids
from chatplex.types import Delta, GenerationRequest, Message, Response


def _close_at_exit(ref: weakref.ref[ChatModel]) -> None:
    model = ref()
    if model is not None:
        model.close()


def _as_list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


class ChatModel:
    """Chat with, stream from and score with a model on any engine.

    `args`: a dict of arguments, a path to a YAML file, or None to read the command line. See `chatplex.config`.
    Safe to share between threads and coroutines. Use as a context manager, or call `close()`.
    """

    def __init__(self, args: dict[str, Any] | str | None = None, *, engine: Engine | None = None) -> None:
        """`engine`: one made already for these arguments (a server's extra frontend joining a running engine
        process); by default the arguments' own."""
        self.args: ChatplexArgs = load_args(args)
        self.engine: Engine = engine if engine is not None else create_engine(self.args)
        self._loop = BackgroundLoop()
        self._closed = False
        try:
            self._loop.run(self.engine.start())
        except BaseException:
            self._loop.run(self.engine.close())
            self._loop.stop()
            raise
        # A model still open at interpreter exit is closed first: the engine's own exit hooks would otherwise run
        # before it (vLLM's stop its engine processes, and its output task then logs a dead engine).
        self._exit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    # ---- requests ------------------------------------------------------------------------------------------
    def build_request(
        self,
        messages: list[Message] | None = None,
        system: str | None = None,
        tools: Any = None,
        images: Any = None,
        videos: Any = None,
        audios: Any = None,
        *,
        prompt: str | None = None,
        template_kwargs: dict[str, Any] | None = None,
        response_format: Any = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
        adapter: str | None = None,
        **gen_kwargs: Any,
    ) -> GenerationRequest:
        """Validate chat (or raw prompt) input and generation kwargs into an engine request.

        `response_format` (OpenAI's: json_object / json_schema) and `tool_choice` "required" or a named function
        are enforced by constrained decoding; `tool_choice="none"` hides the tools from the model."""
        sampling = build_sampling_params(
            gen_kwargs, self.args.generating.as_request_defaults(), vocab_size=self.engine.vocab_size
        )
        kwargs = dict(template_kwargs or {})
        if self.args.model.enable_thinking is not None:
            kwargs.setdefault("enable_thinking", self.args.model.enable_thinking)
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InvalidRequestError("prompt: must be a string.", param="prompt")
            return GenerationRequest(sampling=sampling, prompt=prompt, template_kwargs=kwargs, adapter=adapter)
        norm = normalize_messages(messages, system=system, default_system=self.args.model.default_system)
        tools = validate_tools(tools) if tool_choice != "none" else None
        parallel = parallel_tool_calls is not False
        parser = tool_parser_name(self.template, tools)
        constraint = request_constraint(response_format, tool_choice, tools, parser, parallel)
        if keeps_special_tokens(parser) and "skip_special_tokens" not in gen_kwargs:
            sampling = dataclasses.replace(sampling, skip_special_tokens=False)
        if constraint is not None and not self.engine.supports_constraints:
            raise UnsupportedFeatureError(
                f"{constraint.param}: the {self.engine.backend} engine cannot constrain its output.",
                param=constraint.param,
            )
        return GenerationRequest(
            sampling=sampling,
            messages=norm,
            tools=tools,
            constraint=constraint,
            parallel_tool_calls=parallel,
            template_kwargs=kwargs,
            images=_as_list(images, "images"),
            videos=_as_list(videos, "videos"),
            audios=_as_list(audios, "audios"),
            adapter=adapter,  # a LoRA adapter's name (see `adapters`), None for the model as loaded
        )

    async def agenerate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """The streaming primitive: the engine's deltas for a built request (all `n` sequences interleaved).

        Chat replies come parsed (`Delta.text` is answer content; `reasoning` and `tool_calls` carry the rest)
        when the engine renders the template in-process. Closing this iterator early aborts the request."""
        gen = self.engine.generate(request)
        make_parser = reply_parsers(self.template, request, lambda: self._prompt_text(request))
        if make_parser is not None:
            gen = parse_deltas(gen, make_parser)
        async with aclosing(gen):
            async for delta in gen:
                yield delta

    def render_prompt(
        self,
        messages: list[Message],
        system: str | None = None,
        tools: Any = None,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text the model would see for these messages (engines that render in-process only)."""
        if getattr(self.engine, "prompts", None) is None:
            raise UnsupportedFeatureError(
                f"The {self.engine.backend} engine renders prompts on its server; chatplex cannot show them.",
                param="infer_backend",
            )
        return self._prompt_text(self.build_request(messages, system, tools, template_kwargs=template_kwargs))

    @property
    def template(self) -> ChatTemplate | None:
        """The chat template (with its tool / reasoning parsers) of an in-process engine; None for remote ones."""
        return self.engine.template

    def _prompt_text(self, request: GenerationRequest) -> str:
        from chatplex.templates import render_prompt

        prompts = self.engine.prompts  # type: ignore[attr-defined]  # in-process engines only (render_prompt checks)
        return render_prompt(
            prompts.tokenizer,
            prompts.template,
            request.messages or [],
            tools=request.tools,
            template_kwargs=request.template_kwargs,
        )

    def generate(self, request: GenerationRequest) -> Iterator[Delta]:
        return self._loop.iterate(self.agenerate(request))

    # ---- chat ----------------------------------------------------------------------------------------------
    async def astream_chat(
        self,
        messages: list[Message],
        system: str | None = None,
        tools: Any = None,
        images: Any = None,
        videos: Any = None,
        audios: Any = None,
        **gen_kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        """Stream the reply's text as it is generated (the first sequence if n > 1)."""
        request = self.build_request(messages, system, tools, images, videos, audios, **gen_kwargs)
        gen = self.agenerate(request)
        async with aclosing(gen):
            async for delta in gen:
                if delta.index == 0 and delta.text:
                    yield delta.text

    def stream_chat(
        self,
        messages: list[Message],
        system: str | None = None,
        tools: Any = None,
        images: Any = None,
        videos: Any = None,
        audios: Any = None,
        **gen_kwargs: Any,
    ) -> Iterator[str]:
        return self._loop.iterate(self.astream_chat(messages, system, tools, images, videos, audios, **gen_kwargs))

    async def achat(
        self,
        messages: list[Message],
        system: str | None = None,
        tools: Any = None,
        images: Any = None,
        videos: Any = None,
        audios: Any = None,
        **gen_kwargs: Any,
    ) -> list[Response]:
        """Generate complete replies: one `Response` per requested sequence (`n` / `num_return_sequences`)."""
        request = self.build_request(messages, system, tools, images, videos, audios, **gen_kwargs)
        return await self._collect(request)

    def chat(
        self,
        messages: list[Message],
        system: str | None = None,
        tools: Any = None,
        images: Any = None,
        videos: Any = None,
        audios: Any = None,
        **gen_kwargs: Any,
    ) -> list[Response]:
        return self._loop.run(self.achat(messages, system, tools, images, videos, audios, **gen_kwargs))

    async def _collect(self, request: GenerationRequest) -> list[Response]:
        n = request.sampling.n
        texts: list[list[str]] = [[] for _ in range(n)]
        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[Any]] = [[] for _ in range(n)]
        finals: list[Delta | None] = [None] * n
        reasoning: list[list[str]] = [[] for _ in range(n)]
        calls: list[list[Any]] = [[] for _ in range(n)]
        async for delta in self.agenerate(request):
            texts[delta.index].append(delta.text)
            reasoning[delta.index].append(delta.reasoning)
            calls[delta.index].extend(delta.tool_calls)
            tokens[delta.index].extend(delta.token_ids)
            if delta.logprobs:
                logprobs[delta.index].extend(delta.logprobs)
            if delta.finish_reason is not None:
                finals[delta.index] = delta
        return [
            Response(
                response_text="".join(texts[i]),
                response_length=final.completion_tokens,
                prompt_length=final.prompt_tokens,
                finish_reason=final.finish_reason,  # type: ignore[arg-type]  # final: its finish_reason is set
                token_ids=tokens[i],
                logprobs=logprobs[i] if request.sampling.logprobs is not None else None,
                tool_calls=openai_tool_calls(calls[i]),
                reasoning_content="".join(reasoning[i]) or None,
            )
            for i, final in enumerate(finals)
            if final is not None
        ]

    # ---- scores --------------------------------------------------------------------------------------------
    async def aget_scores(
        self, batch_input: list[Any], max_length: int | None = None, *, truncation_side: str = "right"
    ) -> list[float]:
        """Raw reward-model scores, one per input: a string, or a conversation (list of messages) that is
        rendered with the model's chat template. An input longer than `max_length` tokens loses its end
        (`truncation_side="right"`, LLaMA-Factory's way) or its beginning ("left", vLLM's truncate_prompt_tokens).
        Raises UnsupportedFeatureError for a generative model."""
        if not isinstance(batch_input, list) or not batch_input:
            raise InvalidRequestError("batch_input: must be a non-empty list.", param="batch_input")
        if truncation_side not in ("left", "right"):
            raise InvalidRequestError(
                f"truncation_side: must be 'left' or 'right', got {truncation_side!r}.", param="truncation_side"
            )
        return await self.engine.score(batch_input, max_length, truncation_side)

    def get_scores(
        self, batch_input: list[Any], max_length: int | None = None, *, truncation_side: str = "right"
    ) -> list[float]:
        return self._loop.run(self.aget_scores(batch_input, max_length, truncation_side=truncation_side))

    # ---- LoRA adapters -------------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        """Names of the LoRA adapters a request may pick with `adapter=`."""
        return self.engine.adapters

    async def aload_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter directory under `name`, usable by requests at once."""
        await self.engine.load_adapter(name, path)

    def load_adapter(self, name: str, path: str) -> None:
        self._loop.run(self.aload_adapter(name, path))

    async def aunload_adapter(self, name: str) -> None:
        await self.engine.unload_adapter(name)

    def unload_adapter(self, name: str) -> None:
        self._loop.run(self.aunload_adapter(name))

    # ---- embeddings, rerank, tokens ------------------------------------------------------------------------
    async def aembed(
        self,
        input: Any,
        *,
        pooling: str | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> Embeddings:
        """Embeddings, one per input: `input` is a string, a list of strings, a list of token ids or a list of
        token-id lists (OpenAI's shapes). An embedding model pools as its sentence-transformers files say;
        a causal LM pools its final hidden states at the last token (`pooling="last"`) or over all tokens
        ("mean"), L2-normalised. `dimensions` cuts a Matryoshka model's vectors (and renormalises them);
        `prompt_name` picks one of an embedding model's prompts (config_sentence_transformers.json)."""
        inputs = embedding_inputs(input)
        check_token_ids(inputs, self.engine.vocab_size)
        return await self.engine.embed(inputs, pooling=pooling, dimensions=dimensions, prompt_name=prompt_name)

    def embed(
        self,
        input: Any,
        *,
        pooling: str | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> Embeddings:
        return self._loop.run(self.aembed(input, pooling=pooling, dimensions=dimensions, prompt_name=prompt_name))

    async def arerank(self, query: str, documents: list[Any], top_n: int | None = None) -> Reranked:
        """`documents` (strings or {"text": ...}) by a cross-encoder's relevance to `query`, best first, at most
        `top_n` of them. Raises UnsupportedFeatureError for a model that is not a cross-encoder."""
        if not isinstance(query, str) or not query:
            raise InvalidRequestError("query: must be a non-empty string.", param="query")
        texts = rerank_documents(documents)
        check_top_n(top_n)
        scores, tokens = await self.engine.rerank(query, texts)
        return Reranked(ranked(scores, texts, top_n), tokens)

    def rerank(self, query: str, documents: list[Any], top_n: int | None = None) -> Reranked:
        return self._loop.run(self.arerank(query, documents, top_n))

    def tokenize(
        self,
        prompt: str | None = None,
        messages: list[Message] | None = None,
        *,
        add_special_tokens: bool | None = None,
        add_generation_prompt: bool = True,
        tools: Any = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """Token ids of a prompt (special tokens added unless `add_special_tokens=False`) or of messages rendered
        with the chat template as a request would be (the template writes its own special tokens)."""
        return token_ids(self, prompt, messages, add_special_tokens, add_generation_prompt, tools, template_kwargs)

    def detokenize(self, tokens: list[int]) -> str:
        """The text of token ids, special tokens included (as vLLM's /detokenize)."""
        check_token_list(tokens, self.engine.vocab_size)
        return str(self.engine.local_tokenizer.decode(tokens))

    # ---- lifecycle -----------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def aclose(self) -> None:
        """Close from a coroutine running on another loop than the model's own."""
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.engine.close(), self._loop.loop))
        self._closed = True
        atexit.unregister(self._exit_hook)
        self._loop.stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._exit_hook)
        self._loop.run(self.engine.close())
        self._loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
