"""Pydantic models of Anthropic's Messages API bodies (field names as Anthropic spells them).

Request models accept unknown fields (`extra="allow"`) so newer clients keep working; `anthropic.convert` logs
them. Content blocks stay plain objects here and are checked by `anthropic.messages`, whose errors name the exact
block (`messages[1].content[0].source`) where a union of block models would report pydantic's union members.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ---- requests -------------------------------------------------------------------------------------------------


class AnthropicRequest(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputMessage(AnthropicRequest):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class ToolDefinition(AnthropicRequest):
    """A client tool; Anthropic's server tools (web search, bash...) carry a `type` and are refused."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    type: str | None = None


class ToolChoice(AnthropicRequest):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(AnthropicRequest):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class OutputFormat(AnthropicRequest):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["json_schema"]
    # `schema` would shadow a BaseModel method
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(AnthropicRequest):
    format: OutputFormat | None = None
    effort: str | None = None


class CountTokensRequest(AnthropicRequest):
    """The fields that shape the prompt: what `/v1/messages/count_tokens` takes."""

    model: str
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None


# ---- responses ------------------------------------------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    # Anthropic signs its thinking so it can be passed back verified; chatplex has nothing to sign.
    signature: str = ""


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


ContentBlock = Annotated[TextBlock | ThinkingBlock | ToolUseBlock, Field(discriminator="type")]


class Usage(BaseModel):
    # Anthropic's split: input_tokens are the prompt tokens computed, cache_read_input_tokens those read from the
    # engine's prefix cache (their sum is the prompt). chatplex has no explicit cache writes.
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def of(cls, delta: Any, output_tokens: int) -> Usage:
        cached = delta.cached_tokens or 0
        return cls(
            input_tokens=delta.prompt_tokens - cached, output_tokens=output_tokens, cache_read_input_tokens=cached
        )


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage


class CountTokensResponse(BaseModel):
    input_tokens: int


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail


# ---- stream events --------------------------------------------------------------------------------------------


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class ThinkingDelta(BaseModel):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class SignatureDelta(BaseModel):
    type: Literal["signature_delta"] = "signature_delta"
    signature: str


class InputJSONDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


BlockDelta = TextDelta | ThinkingDelta | SignatureDelta | InputJSONDelta


class MessageStartEvent(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: BlockDelta


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class PingEvent(BaseModel):
    type: Literal["ping"] = "ping"


class MessageDeltaBody(BaseModel):
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None


class MessageDeltaUsage(BaseModel):
    input_tokens: int | None = None
    output_tokens: int
    cache_read_input_tokens: int | None = None


class MessageDeltaEvent(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDeltaBody
    usage: MessageDeltaUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"] = "message_stop"


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | PingEvent
    | MessageDeltaEvent
    | MessageStopEvent
)
BlockEvent = ContentBlockStartEvent | ContentBlockDeltaEvent | ContentBlockStopEvent
