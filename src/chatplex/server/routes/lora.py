"""vLLM's run-time LoRA endpoints: POST /v1/load_lora_adapter and /v1/unload_lora_adapter (behind the API key)."""

from __future__ import annotations

from fastapi import Depends
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from chatplex.errors import InvalidRequestError
from chatplex.server.json_body import api_router
from chatplex.server.routes import error_responses, get_state
from chatplex.server.state import ServerState

router = api_router()
_RESPONSES = error_responses()


class LoadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    lora_name: str = Field(min_length=1, description="The name requests will give as `model`.")
    lora_path: str = Field(min_length=1, description="A peft LoRA adapter directory on the server.")


class UnloadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None  # vLLM's field; names are enough here


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse, responses=_RESPONSES)
async def load_lora_adapter(body: LoadLoRAAdapterRequest, state: ServerState = Depends(get_state)) -> PlainTextResponse:
    chat_model = state.model_for(None)
    if body.lora_name in state.known_names():
        raise InvalidRequestError(f"lora_name: {body.lora_name!r} is the served model's name.", param="lora_name")
    await chat_model.aload_adapter(body.lora_name, body.lora_path)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, responses=_RESPONSES)
async def unload_lora_adapter(
    body: UnloadLoRAAdapterRequest, state: ServerState = Depends(get_state)
) -> PlainTextResponse:
    await state.model_for(None).aunload_adapter(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
