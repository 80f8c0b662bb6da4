"""Deltas -> Ollama's chat and generate replies: the whole reply, or chunks ending with the `done` chunk.

Chat and generate differ only in where the text goes (`message.content` or `response`), so the delta handling is
shared and a `Shape` builds each body. Durations are in nanoseconds, as Ollama reports them: the prompt's runs to the
first delta (the engine evaluates the prompt before it yields), the output's from there to the last. Tool calls go
out whole (arguments as an object), in one chunk before the `done` chunk when streaming, as Ollama sends them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chatplex.output_parsing import openai_tool_calls
from chatplex.server.ollama.schemas import (
    ChatResponse,
    GenerateResponse,
    Logprob,
    Message,
    ToolCall,
    ToolCallFunction,
    TopLogprob,
)
from chatplex.templates.tool_parsers import ToolCallDelta
from chatplex.types import Delta, TokenLogprob


def now_iso() -> str:
    """The current time as Ollama writes `created_at`: RFC 3339 in UTC."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Clock:
    """When the request arrived and when its first delta came back."""

    start: int = field(default_factory=time.perf_counter_ns)
    first: int | None = None

    def mark(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def timings(self) -> dict[str, int]:
        end = time.perf_counter_ns()
        first = self.first or end
        # Clients divide counts by these: never send a zero.
        return {
            "total_duration": max(end - self.start, 1),
            "load_duration": 0,  # the model is loaded once, when the server starts
            "prompt_eval_duration": max(first - self.start, 1),
            "eval_duration": max(end - first, 1),
        }


@dataclass
class Piece:
    """What one chunk (or the whole reply) says."""

    text: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[Logprob] | None = None


# (what to say, the `done` fields or None for a chunk before the last) -> a response body
Shape = Callable[[Piece, dict[str, Any] | None], ChatResponse | GenerateResponse]


def chat_shape(model: str) -> Shape:
    def build(piece: Piece, final: dict[str, Any] | None) -> ChatResponse:
        message = Message(
            role="assistant", content=piece.text, thinking=piece.thinking or None, tool_calls=piece.tool_calls or None
        )
        done = final is not None
        return ChatResponse(
            model=model, created_at=now_iso(), message=message, done=done, logprobs=piece.logprobs, **(final or {})
        )

    return build


def generate_shape(model: str) -> Shape:
    def build(piece: Piece, final: dict[str, Any] | None) -> GenerateResponse:
        return GenerateResponse(
            model=model,
            created_at=now_iso(),
            response=piece.text,
            thinking=piece.thinking or None,
            done=final is not None,
            logprobs=piece.logprobs,
            **(final or {}),
        )

    return build


@dataclass
class _Totals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    def add(self, delta: Delta) -> None:
        self.prompt_tokens, self.completion_tokens = delta.prompt_tokens, delta.completion_tokens
        self.finish_reason = delta.finish_reason or self.finish_reason

    def final(self, clock: Clock) -> dict[str, Any]:
        return {
            "done_reason": "length" if self.finish_reason == "length" else "stop",  # tool calls end with "stop" too
            "prompt_eval_count": self.prompt_tokens,
            "eval_count": self.completion_tokens,
            **clock.timings(),
        }


def _arguments(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        value = None
    # The tool parsers emit JSON objects; anything else is kept, under one key, rather than lost.
    return value if isinstance(value, dict) else {"arguments": arguments}


def _tool_calls(pieces: list[ToolCallDelta]) -> list[ToolCall]:
    return [
        ToolCall(
            function=ToolCallFunction(
                name=c["function"]["name"], arguments=_arguments(c["function"]["arguments"]), index=i
            )
        )
        for i, c in enumerate(openai_tool_calls(pieces))
    ]


def _logprobs(items: list[TokenLogprob] | None) -> list[Logprob] | None:
    if items is None:
        return None
    return [
        Logprob(
            token=t.token,
            logprob=t.logprob,
            top_logprobs=[TopLogprob(token=a.token, logprob=a.logprob) for a in t.top] or None,
        )
        for t in items
    ]


async def whole(
    deltas: AsyncGenerator[tuple[int, Delta], None], clock: Clock, shape: Shape
) -> ChatResponse | GenerateResponse:
    """The complete reply (`stream: false`)."""
    totals, text, thinking, calls = _Totals(), [], [], []
    logprobs: list[TokenLogprob] | None = None
    async with aclosing(deltas):
        async for _, delta in deltas:
            clock.mark()
            totals.add(delta)
            text.append(delta.text)
            thinking.append(delta.reasoning)
            calls.extend(delta.tool_calls)
            if delta.logprobs is not None:
                logprobs = (logprobs or []) + delta.logprobs
    piece = Piece("".join(text), "".join(thinking), _tool_calls(calls), _logprobs(logprobs))
    return shape(piece, totals.final(clock))


async def chunks(
    deltas: AsyncGenerator[tuple[int, Delta], None], clock: Clock, shape: Shape
) -> AsyncGenerator[ChatResponse | GenerateResponse, None]:
    """One chunk per delta with news, the tool calls (if any), then the `done` chunk."""
    totals, calls = _Totals(), []
    async with aclosing(deltas):
        async for _, delta in deltas:
            clock.mark()
            totals.add(delta)
            calls.extend(delta.tool_calls)
            if delta.text or delta.reasoning or delta.logprobs:
                yield shape(Piece(delta.text, delta.reasoning, [], _logprobs(delta.logprobs)), None)
    if calls:
        yield shape(Piece(tool_calls=_tool_calls(calls)), None)
    yield shape(Piece(), totals.final(clock))


def loaded(shape: Shape) -> ChatResponse | GenerateResponse:
    """The reply to a request with nothing to answer (no messages, no prompt): Ollama's way to load a model."""
    return shape(Piece(), {"done_reason": "load"})
