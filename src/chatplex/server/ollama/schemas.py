"""Ollama's request and response bodies, with its field names (as the official `ollama` package declares them).

Unknown request fields are ignored, as Ollama's own server ignores them; unknown `options` are logged and ignored.
Responses are sent without null fields (`exclude_none`), as Ollama leaves out what does not apply.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# `format`: "" (plain text), "json" (any JSON object), or a JSON schema the reply must follow.
Format = Literal["", "json"] | dict[str, Any]
# `think`: on/off, or an effort level for models that take one (gpt-oss).
Think = bool | Literal["high", "medium", "low"]


class Options(BaseModel):
    """Ollama's `options`. Sampling ones map to chatplex's (`options.py`); load-time ones are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    num_predict: int | None = None
    num_ctx: int | None = None
    # Would change the sampling if honoured: refused unless at their neutral values (options.py).
    mirostat: int | None = None
    typical_p: float | None = None
    # Accepted and ignored: they tune llama.cpp's runner, or windows chatplex does not have.
    repeat_last_n: int | None = None
    penalize_newline: bool | None = None
    tfs_z: float | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    num_keep: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    numa: bool | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None


class ToolCallFunction(BaseModel):
    name: str
    # Ollama sends an object; a JSON string (OpenAI's habit) is accepted on input too.
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    index: int | None = None


class ToolCall(BaseModel):
    function: ToolCallFunction


class Message(BaseModel):
    """A chat message; `images` are base64 strings, `tool_name` names the tool whose result a tool message holds."""

    role: str
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None


class _Sampled(BaseModel):
    """Fields chat and generate share."""

    model: str = Field(min_length=1)
    format: Format | None = None
    options: Options | None = None
    stream: bool = True  # Ollama streams unless told not to
    keep_alive: float | str | None = None  # accepted; the model stays loaded for the server's life
    think: Think | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class ChatRequest(_Sampled):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Sampled):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None  # deprecated by Ollama: accepted and ignored
    raw: bool = False
    images: list[str] | None = None


class ShowRequest(BaseModel):
    model: str | None = None
    name: str | None = None  # the older spelling of `model`
    verbose: bool | None = None


# ---- responses -------------------------------------------------------------------------------------------------
class TopLogprob(BaseModel):
    token: str
    logprob: float


class Logprob(TopLogprob):
    top_logprobs: list[TopLogprob] | None = None


class _Reply(BaseModel):
    """What every chat and generate chunk carries; the last one (`done`) adds the reason, counts and timings."""

    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[Logprob] | None = None


class ChatResponse(_Reply):
    message: Message


class GenerateResponse(_Reply):
    response: str
    thinking: str | None = None


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str
    family: str
    families: list[str] | None = None
    parameter_size: str
    quantization_level: str


class ListedModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class ListResponse(BaseModel):
    models: list[ListedModel]


class RunningModel(ListedModel):
    expires_at: str
    size_vram: int
    context_length: int | None = None


class ProcessResponse(BaseModel):
    models: list[RunningModel]


class ShowResponse(BaseModel):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class VersionResponse(BaseModel):
    version: str


class OllamaError(BaseModel):
    error: str
