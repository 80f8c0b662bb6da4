"""POST /tokenize and /detokenize (vLLM's shapes): the served model's own tokenizer, and for messages its chat
template as a chat request renders it (ChatModel.tokenize / detokenize)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from pydantic import BaseModel, ConfigDict, Field

from chatplex.errors import UnsupportedFeatureError
from chatplex.server.json_body import api_router
from chatplex.server.routes import error_responses, get_state
from chatplex.server.state import ServerState

router = api_router()
_RESPONSES = error_responses()


class TokenizeRequest(BaseModel):
    """vLLM's two tokenize requests in one: a `prompt`, or `messages` rendered with the chat template."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | None = Field(None, description="Text to tokenize (give this or messages).")
    messages: list[dict[str, Any]] | None = Field(None, description="Chat messages, rendered with the template.")
    add_special_tokens: bool | None = Field(
        None, description="Add the tokenizer's special tokens (default: true for prompt, false for messages)."
    )
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


@router.post("/tokenize", response_model=TokenizeResponse, responses=_RESPONSES)
async def tokenize(body: TokenizeRequest, state: ServerState = Depends(get_state)) -> TokenizeResponse:
    chat_model = state.model_for(body.model)
    if body.continue_final_message:
        raise UnsupportedFeatureError(
            "continue_final_message: not supported; send add_generation_prompt: false to tokenize a conversation "
            "as it stands.",
            param="continue_final_message",
        )
    ids = chat_model.tokenize(
        body.prompt,
        body.messages,
        add_special_tokens=body.add_special_tokens,
        add_generation_prompt=body.add_generation_prompt,
        tools=body.tools,
        template_kwargs=body.chat_template_kwargs,
    )
    strs = chat_model.engine.local_tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=chat_model.engine.max_model_len, tokens=ids, token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=_RESPONSES)
async def detokenize(body: DetokenizeRequest, state: ServerState = Depends(get_state)) -> DetokenizeResponse:
    chat_model = state.model_for(body.model)
    return DetokenizeResponse(prompt=chat_model.detokenize(body.tokens))
