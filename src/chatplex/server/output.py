"""Deltas -> OpenAI response bodies and stream chunks (chat and completions), with exact usage.

A choice's index is `request index * n + delta.index`, so a completion request with several prompts numbers
its choices the way OpenAI does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from chatplex.output_parsing import openai_tool_calls
from chatplex.server import schemas as s
from chatplex.templates.tool_parsers import ToolCallDelta
from chatplex.types import Delta, TokenLogprob


def chat_logprobs(items: list[TokenLogprob] | None) -> s.ChatLogprobs | None:
    if items is None:
        return None
    return s.ChatLogprobs(
        content=[
            s.TokenLogprobOut(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode()),
                top_logprobs=[
                    s.TopLogprobOut(token=a.token, logprob=a.logprob, bytes=list(a.token.encode())) for a in t.top
                ],
            )
            for t in items
        ]
    )


def completion_logprobs(items: list[TokenLogprob] | None, offset: int) -> s.CompletionLogprobs | None:
    """Legacy logprobs; `offset` is where this piece's text starts in the choice's text."""
    if items is None:
        return None
    out = s.CompletionLogprobs()
    for t in items:
        out.tokens.append(t.token)
        out.token_logprobs.append(t.logprob)
        out.top_logprobs.append({a.token: a.logprob for a in t.top})
        out.text_offset.append(offset)
        offset += len(t.token)
    return out


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0
    chars: int = 0


class Tracker:
    """Per-choice state shared by the non-streaming and streaming paths: text so far, usage, finish reasons."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.choices: dict[int, _Choice] = {}
        self.prompt_tokens: dict[int, int] = {}
        self.cached_tokens: dict[int, int] = {}  # per request: the fewest of its sequences' (each counts the prompt)

    def add(self, request_index: int, delta: Delta) -> tuple[int, _Choice]:
        index = request_index * self.n + delta.index
        choice = self.choices.setdefault(index, _Choice())
        choice.text.append(delta.text)
        choice.reasoning.append(delta.reasoning)
        choice.tool_calls.extend(delta.tool_calls)
        choice.chars += len(delta.text)
        if delta.logprobs is not None:
            choice.logprobs = (choice.logprobs or []) + delta.logprobs
        choice.completion_tokens = delta.completion_tokens
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason
        self.prompt_tokens[request_index] = delta.prompt_tokens
        if delta.cached_tokens is not None:
            known = self.cached_tokens.get(request_index, delta.cached_tokens)
            self.cached_tokens[request_index] = min(known, delta.cached_tokens)
        return index, choice

    def usage(self) -> s.Usage:
        prompt = sum(self.prompt_tokens.values())
        completion = sum(c.completion_tokens for c in self.choices.values())
        details = s.PromptTokensDetails(cached_tokens=sum(self.cached_tokens.values())) if self.cached_tokens else None
        return s.Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=details,
        )


async def chat_completion(
    rid: str, model: str, n: int, deltas: AsyncGenerator[tuple[int, Delta], None]
) -> s.ChatCompletion:
    tracker = Tracker(n)
    async for request_index, delta in deltas:
        tracker.add(request_index, delta)
    choices = [
        s.ChatChoice(index=i, message=_message(c), logprobs=chat_logprobs(c.logprobs), finish_reason=c.finish_reason)
        for i, c in sorted(tracker.choices.items())
    ]
    return s.ChatCompletion(id=rid, model=model, choices=choices, usage=tracker.usage())


def _message(choice: _Choice) -> s.AssistantMessage:
    text, reasoning = "".join(choice.text), "".join(choice.reasoning) or None
    calls = [s.ToolCallOut.model_validate(c) for c in openai_tool_calls(choice.tool_calls)] or None
    # OpenAI sends null content for a reply that is only tool calls.
    content = text if text or not calls else None
    return s.AssistantMessage(content=content, tool_calls=calls, reasoning_content=reasoning, reasoning=reasoning)


def _chat_delta(delta: Delta, first: bool) -> s.ChatDelta:
    calls = [s.ToolCallChunk.model_validate(c.to_openai()) for c in delta.tool_calls] or None
    content = delta.text if delta.text or not (calls or delta.reasoning) else None
    return s.ChatDelta(
        role="assistant" if first else None,
        content=content,
        tool_calls=calls,
        reasoning_content=delta.reasoning or None,
        reasoning=delta.reasoning or None,
    )


async def chat_chunks(
    rid: str, model: str, n: int, deltas: AsyncGenerator[tuple[int, Delta], None], include_usage: bool
) -> AsyncGenerator[s.ChatCompletionChunk, None]:
    tracker = Tracker(n)
    started: set[int] = set()
    async with aclosing(deltas):
        async for request_index, delta in deltas:
            index, _ = tracker.add(request_index, delta)
            first = index not in started
            news = delta.text or delta.reasoning or delta.tool_calls or delta.logprobs or delta.finish_reason
            if not (first or news):
                continue  # text held back (a partial character, a possible stop string or tool call): nothing yet
            started.add(index)
            choice = s.ChatChunkChoice(
                index=index,
                delta=_chat_delta(delta, first),
                logprobs=chat_logprobs(delta.logprobs),
                finish_reason=delta.finish_reason,
            )
            yield s.ChatCompletionChunk(id=rid, model=model, choices=[choice])
    if include_usage:
        yield s.ChatCompletionChunk(id=rid, model=model, choices=[], usage=tracker.usage())


async def completion(rid: str, model: str, n: int, deltas: AsyncGenerator[tuple[int, Delta], None]) -> s.Completion:
    tracker = Tracker(n)
    async for request_index, delta in deltas:
        tracker.add(request_index, delta)
    choices = [
        s.CompletionChoice(
            index=i, text="".join(c.text), logprobs=completion_logprobs(c.logprobs, 0), finish_reason=c.finish_reason
        )
        for i, c in sorted(tracker.choices.items())
    ]
    return s.Completion(id=rid, model=model, choices=choices, usage=tracker.usage())


async def completion_chunks(
    rid: str, model: str, n: int, deltas: AsyncGenerator[tuple[int, Delta], None], include_usage: bool
) -> AsyncGenerator[s.Completion, None]:
    tracker = Tracker(n)
    async with aclosing(deltas):
        async for request_index, delta in deltas:
            prior = tracker.choices.get(request_index * n + delta.index)
            offset = prior.chars if prior else 0
            index, _ = tracker.add(request_index, delta)
            if not (delta.text or delta.logprobs or delta.finish_reason):
                continue
            choice = s.CompletionChoice(
                index=index,
                text=delta.text,
                logprobs=completion_logprobs(delta.logprobs, offset),
                finish_reason=delta.finish_reason,
            )
            yield s.Completion(id=rid, model=model, choices=[choice])
    if include_usage:
        yield s.Completion(id=rid, model=model, choices=[], usage=tracker.usage())
