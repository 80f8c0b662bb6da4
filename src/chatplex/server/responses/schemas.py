"""Pydantic models of the Responses API: request input items, output items, the Response object, stream events.

Field names follow openai-python's `types/responses`. Request models accept unknown fields (`extra="allow"`), as
the chat schemas do; `convert` rejects the ones that would change the result.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from chatplex.server.schemas import OpenAIRequest

Status = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]

# ---- request ----------------------------------------------------------------------------------------------------


class TextPart(OpenAIRequest):
    type: Literal["input_text", "output_text"]
    text: str


class ImagePart(OpenAIRequest):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class RefusalPart(OpenAIRequest):
    type: Literal["refusal"]
    refusal: str


def _str_or_list(value: Any) -> str:
    return "str" if isinstance(value, str) else "list"


def _part_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    # Tags are capitalized so the server's error paths leave them out (`content[0].text`, not `...input_text...`).
    tags = {"input_text": "Text", "output_text": "Text", "input_image": "Image", "refusal": "Refusal"}
    return tags.get(kind) if isinstance(kind, str) else None


ContentPart = Annotated[
    Annotated[TextPart, Tag("Text")] | Annotated[ImagePart, Tag("Image")] | Annotated[RefusalPart, Tag("Refusal")],
    Discriminator(
        _part_tag,
        custom_error_type="invalid_part_type",
        custom_error_message="type must be one of input_text, output_text, input_image, refusal",
    ),
]
# A string or a list of parts, tagged so an error inside the list names only the bad part.
Content = Annotated[Annotated[str, Tag("str")] | Annotated[list[ContentPart], Tag("list")], Discriminator(_str_or_list)]


class MessageItem(OpenAIRequest):
    """A message; `type` may be left out (the SDK's EasyInputMessage)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallItem(OpenAIRequest):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallOutputItem(OpenAIRequest):
    type: Literal["function_call_output"]
    call_id: str
    output: Content
    id: str | None = None
    status: ItemStatus | None = None


class ReasoningTextPart(OpenAIRequest):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(OpenAIRequest):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningTextPart] = Field(default_factory=list)
    content: list[ReasoningTextPart] | None = None
    encrypted_content: str | None = None
    status: ItemStatus | None = None


def _item_tag(value: Any) -> str | None:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    # Tags are capitalized so the server's error paths leave them out (`input[0].content`, not `...message...`).
    return (
        {
            "message": "Message",
            "function_call": "FunctionCall",
            "function_call_output": "FunctionCallOutput",
            "reasoning": "Reasoning",
        }.get(kind)
        if isinstance(kind, str)
        else None
    )


InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutput")]
    | Annotated[ReasoningItem, Tag("Reasoning")],
    Discriminator(
        _item_tag,
        custom_error_type="invalid_item_type",
        custom_error_message="type must be one of message, function_call, function_call_output, reasoning",
    ),
]


# A string or a list of items, tagged so an error inside the list names only the bad item (`input[2].content`).
Input = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[InputItem], Tag("list")],
    Discriminator(_str_or_list),
]


class TextConfig(OpenAIRequest):
    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ReasoningConfig(OpenAIRequest):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(OpenAIRequest):
    model: str | None = None
    input: Input | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool | None = None
    # Understood but not served: `convert` answers a value that would change the result with a 400.
    background: bool | None = None
    include: list[str] | None = None
    truncation: str | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None


# ---- response ---------------------------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str = ""
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str = ""


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus = "in_progress"
    content: list[OutputText] = Field(default_factory=list)


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str = ""
    status: ItemStatus = "in_progress"


class OutputReasoning(BaseModel):
    """The model's thinking, as OpenAI returns it for open-weight models: the text in `content`, no summary."""

    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] = Field(default_factory=list)
    status: ItemStatus = "in_progress"


OutputItem = Annotated[OutputMessage | OutputFunctionCall | OutputReasoning, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    """cached_tokens: prompt tokens read from the engine's prefix cache (0 where the engine does not say)."""

    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"] | None = None


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """OpenAI's `Response`. The request's settings are echoed back, as OpenAI does."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Status = "in_progress"
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig)
    store: bool = True
    background: bool = False
    temperature: float | None = None
    top_p: float | None = None
    text: TextConfig = Field(default_factory=lambda: TextConfig(format={"type": "text"}))
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True
