"""HTTP side of the benchmark: build an OpenAI streaming request, send it with httpx, record when chunks arrive.

Only clock readings and usage counts leave this module (as a `RequestRecord`); the arithmetic lives in
`chatplex.bench.metrics`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from chatplex.bench.metrics import RequestRecord
from chatplex.bench.prompts import BenchPrompt
from chatplex.errors import ChatplexError, ConfigError

ENDPOINTS = {"chat": "/chat/completions", "completions": "/completions"}


def endpoint_url(base_url: str, endpoint: str) -> str:
    """The full URL of `endpoint` (chat or completions) under an OpenAI base URL such as http://host:8000/v1."""
    if endpoint not in ENDPOINTS:
        raise ConfigError(f"endpoint must be one of {sorted(ENDPOINTS)}, got {endpoint!r}.", param="endpoint")
    return base_url.rstrip("/") + ENDPOINTS[endpoint]


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def build_payload(
    endpoint: str,
    model: str,
    prompt: BenchPrompt,
    *,
    temperature: float = 0.0,
    ignore_eos: bool = True,
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of one streaming request with usage reporting on.

    `ignore_eos` asks servers that know it (vLLM, chatplex) to generate exactly `max_tokens`; others ignore it.
    """
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": prompt.output_len,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint == "chat":
        body["messages"] = prompt.chat_messages()
    elif prompt.prompt is None:
        raise ConfigError("endpoint completions needs text prompts, not chat messages.", param="endpoint")
    else:
        body["prompt"] = prompt.prompt
    if ignore_eos:
        body["ignore_eos"] = True
    body.update(extra_body or {})
    return body


def parse_chunk(obj: Any) -> tuple[str, dict[str, Any] | None, str | None]:
    """(text, usage, error) of one SSE data object of a chat or completions stream."""
    if not isinstance(obj, dict):
        return "", None, f"unexpected stream chunk: {obj!r}"
    if "error" in obj:
        err = obj["error"]
        return "", None, str(err.get("message", err) if isinstance(err, dict) else err)
    text = ""
    for choice in obj.get("choices") or []:
        delta = choice.get("delta")
        if isinstance(delta, dict):  # chat; reasoning models stream their thinking as output too
            text += (delta.get("content") or "") + (delta.get("reasoning_content") or "")
        else:
            text += choice.get("text") or ""
    usage = obj.get("usage")
    return text, usage if isinstance(usage, dict) else None, None


async def _error_body(response: httpx.Response) -> str:
    raw = (await response.aread()).decode("utf-8", "replace")
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = raw[:200]
    return f"HTTP {response.status_code}: {message}"


async def send_request(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
    expected_prompt_tokens: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> RequestRecord:
    """Stream one request and record the send time, each text chunk's arrival, the end and the usage.

    Never raises for a failed request: the failure is recorded in `error`, as benchmarks count failures.
    """
    record = RequestRecord(start=clock(), expected_prompt_tokens=expected_prompt_tokens)
    try:
        async with client.stream("POST", url, json=payload, headers=headers) as response:
            if response.status_code != 200:
                record.error = await _error_body(response)
            else:
                await _read_stream(response, record, clock)
    except httpx.HTTPError as e:
        record.error = f"{type(e).__name__}: {e}"
    record.end = clock()
    return record


async def _read_stream(response: httpx.Response, record: RequestRecord, clock: Callable[[], float]) -> None:
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        now = clock()
        try:
            text, usage, error = parse_chunk(json.loads(data))
        except json.JSONDecodeError:
            text, usage, error = "", None, f"invalid JSON in stream: {data[:100]!r}"
        if error is not None:
            record.error = error
            return
        if text:
            record.chunk_times.append(now)
        if usage:
            record.prompt_tokens = usage.get("prompt_tokens", record.prompt_tokens)
            record.completion_tokens = usage.get("completion_tokens", record.completion_tokens)
    record.error = "the stream ended without data: [DONE]"


async def discover_model(client: httpx.AsyncClient, base_url: str, headers: dict[str, str]) -> str:
    """The first model id the server lists at GET /models."""
    url = base_url.rstrip("/") + "/models"
    try:
        response = await client.get(url, headers=headers)
    except httpx.HTTPError as e:
        raise ChatplexError(f"cannot reach {url}: {type(e).__name__}: {e}") from None
    if response.status_code != 200:
        raise ChatplexError(f"GET {url} answered {response.status_code}; pass --model.")
    models = response.json().get("data") or []
    if not models:
        raise ChatplexError(f"GET {url} lists no model; pass --model.")
    return str(models[0]["id"])
