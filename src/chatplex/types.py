"""Engine-independent request and result types.

A request flows down as a `GenerationRequest` (what to generate, with `SamplingParams`); results flow back up as
`Delta`s (a stream of text segments with their tokens); `Response` is what non-streaming calls return.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from chatplex.templates.tool_parsers import ToolCallDelta

FinishReason = Literal["stop", "length", "abort", "tool_calls"]

Message = dict[str, Any]
"""An OpenAI-style chat message: {"role": ..., "content": str | list[part] | None, ...}."""

_request_counter = itertools.count()


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}-{next(_request_counter)}"


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings. Build with `chatplex.sampling.build_sampling_params` to validate.

    temperature == 0 means greedy. `logprobs` is None for none, else the number of top alternatives (0..20) to
    return with each sampled token's logprob.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_new_tokens: int = 512
    max_length: int | None = None  # LLaMA-Factory's cap on prompt + output tokens
    # True when the caller set max_new_tokens: a prompt that leaves less room is an error, not a silent cap.
    max_new_tokens_requested: bool = False
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True)
class Constraint:
    """A grammar every output sequence must follow (structured output, forced tool calls).

    `grammar` is llguidance's grammar (a JSON string, see `chatplex.structured`); `param` is the request field
    it came from, so errors name it; `json_schema` is the plain schema when the whole reply is one JSON value
    (for engines with their own JSON-schema support); `request_fields` are the client's own fields it was built
    from (`response_format` or `tool_choice`), for remote engines, which pass them on to their server.
    """

    grammar: str
    param: str
    json_schema: dict[str, Any] | None = None
    request_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationRequest:
    """What to generate. Exactly one of `messages`, `prompt` or `prompt_token_ids` is set.

    Local engines render `messages` with the chat template; remote engines pass them on as they are.
    """

    sampling: SamplingParams
    messages: list[Message] | None = None
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    tools: list[dict[str, Any]] | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)
    audios: list[Any] = field(default_factory=list)
    adapter: str | None = None
    constraint: Constraint | None = None
    parallel_tool_calls: bool = True  # False: at most one tool call is kept
    request_id: str = field(default_factory=new_request_id)


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """The logprob of one generated token and, if asked, its top alternatives (raw model distribution)."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(kw_only=True)  # eleven fields: built by keyword only
class Delta:
    """One step of one output sequence (or several, for a consumer that fell behind: engines/relay.py): new text
    (possibly empty), the tokens behind it, and on the last delta of the sequence, its finish reason.

    `index` tells which of the request's `n` sequences this belongs to. Token counts are running totals so the
    consumer always knows exact usage.
    """

    index: int
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended the sequence, if any
    # Prompt tokens whose keys and values came from the engine's prefix cache (None: the engine does not say).
    cached_tokens: int | None = None
    # Filled in by ChatModel's output parsing (chat requests on engines that render templates in-process):
    # then `text` is answer content only, `reasoning` the thinking text, `tool_calls` OpenAI-style call pieces.
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass
class Response:
    """One complete reply (LLaMA-Factory's field names)."""

    response_text: str
    response_length: int
    prompt_length: int
    finish_reason: FinishReason
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    # OpenAI-shaped calls: {"id", "type": "function", "function": {"name", "arguments": JSON string}}
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reasoning_content: str | None = None
