"""The OpenAI-compatible client engine (`infer_backend: openai`): any server speaking OpenAI's HTTP API.

`api_base` is the server's base URL as OpenAI clients take it (with the `/v1`), `api_key` its key, and
`model_name_or_path` the model name to ask for (when left out, the first model the server lists). Messages and
tools go to the server as they are: the server renders its own chat template. Prompt requests
(`prompt` / `prompt_token_ids`) use `/completions`; `embed` and `rerank` use `/embeddings` and `/rerank`
(openai_pooling).

Streaming is always on underneath; closing the delta stream closes the HTTP stream, which is how OpenAI-style
servers learn to abort. Connection errors and 429/503 answers before the stream starts are retried with
exponential backoff (honouring Retry-After); anything else raises at once, mapped onto chatplex's errors with
the server's message and the URL.

Token counts: the server reports no token ids, so `Delta.token_ids` stays empty and `TokenLogprob.token_id` is
-1. Each sequence's running `completion_tokens` counts the tokens behind the chunks (exact when the server sends
logprobs, which this engine asks for); `prompt_tokens` is 0 until the final delta of each sequence, which is
held back until the server's usage report arrives and carries its exact numbers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from chatplex.config import ChatplexArgs
from chatplex.embeddings import EmbeddingInput, Embeddings
from chatplex.engines.base import Engine, EngineStats
from chatplex.engines.openai_pooling import remote_embed, remote_rerank
from chatplex.errors import (
    ConfigError,
    ContextLengthExceededError,
    EngineClosedError,
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    NotFoundError,
    UnsupportedFeatureError,
)
from chatplex.templates.tool_parsers.base import ToolCallDelta
from chatplex.types import Delta, GenerationRequest, SamplingParams, TokenLogprob, TopLogprob

logger = logging.getLogger(__name__)

RETRY_STATUSES = (429, 503)
# OpenAI error `type` -> the HTTP status it comes with (for errors sent inside a stream)
_TYPE_STATUS: dict[str | None, int] = {  # looked up with the error's type, None when it has none
    "invalid_request_error": 400,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "service_unavailable": 503,
}
MAX_BACKOFF_S = 10.0


def sampling_body(sp: SamplingParams) -> dict[str, Any]:
    """OpenAI request fields for the sampling settings; extensions (top_k, min_p...) only when they matter."""
    if sp.max_length is not None:
        raise UnsupportedFeatureError(
            "max_length: a remote server counts the prompt itself; use max_new_tokens (max_tokens).", param="max_length"
        )
    body: dict[str, Any] = {
        "temperature": sp.temperature,
        "top_p": sp.top_p,
        "max_tokens": sp.max_new_tokens,
        "n": sp.n,
    }
    optional = {
        "top_k": (sp.top_k, 0),
        "min_p": (sp.min_p, 0.0),
        "repetition_penalty": (sp.repetition_penalty, 1.0),
        "presence_penalty": (sp.presence_penalty, 0.0),
        "frequency_penalty": (sp.frequency_penalty, 0.0),
        "min_tokens": (sp.min_new_tokens, 0),
        "ignore_eos": (sp.ignore_eos, False),
        "skip_special_tokens": (sp.skip_special_tokens, True),
        "seed": (sp.seed, None),
    }
    body.update({k: v for k, (v, default) in optional.items() if v != default})
    if sp.stop:
        body["stop"] = list(sp.stop)
    if sp.stop_token_ids:
        body["stop_token_ids"] = list(sp.stop_token_ids)
    if sp.logit_bias:
        body["logit_bias"] = {str(t): b for t, b in sp.logit_bias}
    return body


def _tool_call_pieces(raw: Any) -> list[ToolCallDelta]:
    """A chunk's `delta.tool_calls` (OpenAI's streamed form: id and name first, then argument pieces)."""
    pieces = []
    for item in raw if isinstance(raw, list) else []:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict):
            continue
        pieces.append(
            ToolCallDelta(
                index=int(item.get("index", 0)),
                arguments=str(function.get("arguments") or ""),
                id=item.get("id"),
                name=function.get("name"),
            )
        )
    return pieces


def _error_from(status: int, payload: Any, url: str) -> Exception:
    """The chatplex error for a non-2xx answer (or an in-band error chunk)."""
    err = payload.get("error", payload) if isinstance(payload, dict) else {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    message = str(err.get("message") or payload)
    param, code = err.get("param"), err.get("code")
    if code == "context_length_exceeded":
        return ContextLengthExceededError(message, param=param or "messages")
    if status == 400 or status == 422:
        if code == "unsupported_parameter":
            return UnsupportedFeatureError(message, param=param)
        return InvalidRequestError(message, param=param, code=code)
    if status in (401, 403):
        return ConfigError(f"api_key: the server at {url} refused it ({status}): {message}", param="api_key")
    if status == 404:
        return NotFoundError(f"{message} (server at {url})", param=param, code=code)
    if status == 429:
        return EngineOverloadedError(f"The server at {url} is overloaded (429): {message}")
    if status == 503:
        return EngineClosedError(f"The server at {url} is unavailable (503): {message}")
    return EngineError(f"The server at {url} failed ({status}): {message}")


class _Choice:
    """Running state of one of the request's sequences."""

    def __init__(self) -> None:
        self.tokens = 0
        self.final: Delta | None = None


class OpenAIEngine(Engine):
    backend = "openai"
    # response_format and tool_choice go to the server as the client sent them; it constrains its own output.
    supports_constraints = True

    def __init__(self, args: ChatplexArgs, *, api_base: str | None = None, discover_model: bool = False) -> None:
        """`api_base` overrides the config's; `discover_model` asks the server for its model name even when
        model_name_or_path is set (a launched server names its model its own way)."""
        margs = args.model
        base = api_base or margs.api_base
        if not base:
            raise ConfigError(
                "api_base: infer_backend openai needs the server's URL, e.g. http://host:8000/v1.", param="api_base"
            )
        self.base_url = base.rstrip("/")
        self.api_key = margs.api_key
        self._model = None if discover_model else margs.model_name_or_path
        opts: dict[str, Any] = dict(getattr(margs, "engine_config", None) or {})
        self.max_retries = int(opts.get("max_retries", 3))
        self.backoff_s = float(opts.get("retry_backoff", 0.5))
        self.timeout_s = float(opts.get("timeout", 600.0))
        # Asking for logprobs makes token counts exact; servers that refuse logprobs need this off.
        self.request_logprobs = bool(opts.get("request_logprobs", True))
        # One client per event loop: httpx connections belong to the loop that opened them, and ChatModel's
        # async methods run on the caller's loop while its sync twins run on a background loop.
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._started = False
        self._stats = EngineStats()
        self._in_flight = 0

    @property
    def model_name(self) -> str:
        return self._model or "unknown"

    def _client(self) -> httpx.AsyncClient:
        if not self._started:
            raise EngineClosedError("The engine is not running.")
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                del self._clients[old]
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            client = self._clients[loop] = httpx.AsyncClient(
                base_url=self.base_url, headers=headers, timeout=httpx.Timeout(self.timeout_s, connect=10.0)
            )
        return client

    async def start(self) -> None:
        self._started = True
        if self._model is None:  # ask the server which model it serves
            response = await self._send("GET", "/models", None)
            models = response.json().get("data") or []
            if not models:
                raise EngineError(f"The server at {self.base_url} lists no models; set model_name_or_path.")
            self._model = models[0]["id"]

    # ---- HTTP ----------------------------------------------------------------------------------------------
    async def _send(
        self, method: str, path: str, body: dict[str, Any] | None, *, stream: bool = False
    ) -> httpx.Response:
        """Send with retries on connection errors and 429/503; return a 2xx response (streamed if asked)."""
        client = self._client()
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                request = client.build_request(method, path, json=body)
                response = await client.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if last:
                    raise EngineError(f"Cannot connect to the OpenAI-compatible server at {url}: {e}") from e
                await asyncio.sleep(self._backoff(attempt, None))
                continue
            except httpx.HTTPError as e:
                raise EngineError(f"Request to {url} failed: {type(e).__name__}: {e}") from e
            if response.is_success:
                return response
            await response.aread()
            await response.aclose()
            if response.status_code in RETRY_STATUSES and not last:
                await asyncio.sleep(self._backoff(attempt, response.headers.get("retry-after")))
                continue
            try:
                payload = response.json()
            except ValueError:
                payload = {"error": {"message": response.text[:500]}}
            raise _error_from(response.status_code, payload, url)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff_s * 2**attempt
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, MAX_BACKOFF_S)

    # ---- requests ------------------------------------------------------------------------------------------
    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        sp = request.sampling
        body: dict[str, Any] = {"model": self.model_name, "stream": True, "stream_options": {"include_usage": True}}
        body.update(sampling_body(sp))
        if request.messages is not None:
            path = "/chat/completions"
            body["messages"] = request.messages
            if request.tools:
                body["tools"] = request.tools
                if not request.parallel_tool_calls:
                    body["parallel_tool_calls"] = False
            if request.constraint is not None:  # the server constrains its own output (response_format, tool_choice)
                body.update(request.constraint.request_fields)
            if request.template_kwargs:
                body["chat_template_kwargs"] = request.template_kwargs
            # Logprobs make token counts exact; they are dropped again when the caller did not ask for them.
            if self.request_logprobs or sp.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = sp.logprobs or 0
        else:
            path = "/completions"
            body["prompt"] = request.prompt if request.prompt is not None else list(request.prompt_token_ids or [])
            if self.request_logprobs or sp.logprobs is not None:
                body["logprobs"] = sp.logprobs or 0
        if request.images or request.videos or request.audios:
            raise UnsupportedFeatureError(
                "images/videos/audios: pass media inside the messages' content parts.", param="images"
            )
        return path, body

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        path, body = self._body(request)
        response = await self._send("POST", path, body, stream=True)
        self._in_flight += 1
        choices = [_Choice() for _ in range(request.sampling.n)]
        finished = 0
        try:
            async for chunk in self._chunks(response):
                if "error" in chunk:  # the server failed after the stream started
                    kind = (chunk["error"] or {}).get("type") if isinstance(chunk["error"], dict) else None
                    raise _error_from(_TYPE_STATUS.get(kind, 500), chunk, f"{self.base_url}{path}")
                for raw in chunk.get("choices") or []:
                    delta = self._delta(raw, choices, request.sampling.logprobs is not None, path)
                    if delta is None:
                        continue
                    if delta.finish_reason is not None:
                        choices[delta.index].final = delta  # held back until the usage report
                    else:
                        yield delta
                usage = chunk.get("usage")
                if usage and not chunk.get("choices"):
                    for final in self._finals(choices, usage):
                        finished += 1
                        yield final
            for choice in choices:  # a server that sends no usage report
                if choice.final is not None:
                    finished += 1
                    yield choice.final
                    choice.final = None
            if finished < len(choices):
                seen = sum(1 for c in choices if c.tokens or c.final is not None) or finished
                hint = (
                    f" (it sent {seen} of n={len(choices)} sequences: it may not support n)" if len(choices) > 1 else ""
                )
                raise EngineError(
                    f"The server at {self.base_url} ended the stream before every sequence finished{hint}."
                )
            self._stats.finished_requests += 1
        finally:
            self._in_flight -= 1
            await response.aclose()
            if finished < len(choices):
                self._stats.aborted_requests += 1

    async def _chunks(self, response: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
        """Server-sent events -> JSON objects, until [DONE]."""
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)
        except httpx.HTTPError as e:
            raise EngineError(f"The stream from {self.base_url} broke: {type(e).__name__}: {e}") from e

    def _delta(self, raw: dict[str, Any], choices: list[_Choice], want_logprobs: bool, path: str) -> Delta | None:
        index = int(raw.get("index", 0))
        if not 0 <= index < len(choices):
            return None
        calls: list[ToolCallDelta] = []
        if path == "/chat/completions":
            text = (raw.get("delta") or {}).get("content") or ""
            calls = _tool_call_pieces((raw.get("delta") or {}).get("tool_calls"))
            logprobs = _chat_logprobs(raw.get("logprobs"))
        else:
            text = raw.get("text") or ""
            logprobs = _completion_logprobs(raw.get("logprobs"))
        choice = choices[index]
        # Without logprobs, count one token per chunk that carries text or a call (what most servers send).
        counted = len(logprobs) if logprobs is not None else int(bool(text or calls))
        choice.tokens += counted
        reason = raw.get("finish_reason")
        self._stats.generated_tokens += counted
        if not text and not reason and not logprobs and not calls:
            return None
        stop_reason = raw.get("stop_reason") if isinstance(raw.get("stop_reason"), (str, int)) else None
        return Delta(
            index=index,
            text=text,
            token_ids=[],
            prompt_tokens=0,
            completion_tokens=choice.tokens,
            logprobs=logprobs if want_logprobs else None,
            finish_reason=reason,
            stop_reason=stop_reason,
            tool_calls=calls,
        )

    def _finals(self, choices: list[_Choice], usage: dict[str, Any]) -> list[Delta]:
        prompt = int(usage.get("prompt_tokens") or 0)
        self._stats.prompt_tokens += prompt
        out = []
        for choice in choices:
            if choice.final is None:
                continue
            final, choice.final = choice.final, None
            final.prompt_tokens = prompt
            if len(choices) == 1 and usage.get("completion_tokens") is not None:
                final.completion_tokens = int(usage["completion_tokens"])
            out.append(final)
        return out

    # ---- embeddings and rerank (the server's /embeddings and /rerank) ---------------------------------------
    async def embed(
        self,
        inputs: list[EmbeddingInput],
        *,
        pooling: str | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> Embeddings:
        return await remote_embed(
            self._send,
            self.base_url,
            self.model_name,
            inputs,
            pooling=pooling,
            dimensions=dimensions,
            prompt_name=prompt_name,
        )

    async def rerank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        return await remote_rerank(self._send, self.base_url, self.model_name, query, documents)

    def stats(self) -> EngineStats:
        return dataclasses.replace(self._stats, running=self._in_flight)

    async def close(self) -> None:
        self._started = False
        clients, self._clients = self._clients, {}
        here = asyncio.get_running_loop()
        for loop, client in clients.items():
            if loop is here:
                await client.aclose()
            elif loop.is_running():  # another thread's loop: close there, without waiting on it
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)


def _chat_logprobs(raw: Any) -> list[TokenLogprob] | None:
    if not isinstance(raw, dict) or raw.get("content") is None:
        return None
    return [
        TokenLogprob(
            -1,
            item.get("token", ""),
            float(item.get("logprob", 0.0)),
            tuple(
                TopLogprob(-1, t.get("token", ""), float(t.get("logprob", 0.0))) for t in item.get("top_logprobs") or []
            ),
        )
        for item in raw["content"]
    ]


def _completion_logprobs(raw: Any) -> list[TokenLogprob] | None:
    if not isinstance(raw, dict) or raw.get("tokens") is None:
        return None
    tops = raw.get("top_logprobs") or [None] * len(raw["tokens"])
    return [
        TokenLogprob(-1, tok, float(lp or 0.0), tuple(TopLogprob(-1, t, float(v)) for t, v in (top or {}).items()))
        for tok, lp, top in zip(raw["tokens"], raw.get("token_logprobs") or [], tops)
    ]
