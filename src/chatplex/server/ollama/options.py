"""Ollama's `options` -> chatplex generation arguments, and chatplex's errors renamed to the fields Ollama clients sent.

`num_predict` follows Ollama: a limit, not a promise. It is applied after the request is built (`apply_limits`), so a
prompt that leaves less room than asked stops at the context ("length") instead of failing; -1, -2 or 0 mean "up to
the context". The context itself is the server's (`--max-model-len`): `num_ctx` is accepted, and a value above the
server's context is capped to it (a prompt that does not fit gets the usual context-length error).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from chatplex.errors import InvalidRequestError
from chatplex.server.errors import unsupported
from chatplex.server.ollama.schemas import Options
from chatplex.types import GenerationRequest

logger = logging.getLogger(__name__)

# Ollama option -> chatplex generation argument
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
}
# chatplex's name in an error -> the field as the Ollama client sent it
_FIELDS = {
    **{ours: f"options.{theirs}" for theirs, ours in _SAMPLING.items()},
    "max_new_tokens": "options.num_predict",
    "max_tokens": "options.num_predict",
    "response_format": "format",
    "top_logprobs": "top_logprobs",
}


def sampling_kwargs(options: Options | None) -> dict[str, Any]:
    """The generation arguments `options` sets (unset ones keep the server's defaults)."""
    if options is None:
        return {}
    if options.mirostat:
        raise unsupported("options.mirostat", "Mirostat sampling is not supported; use 0 (off).")
    if options.typical_p is not None and options.typical_p != 1.0:
        raise unsupported("options.typical_p", "typical sampling is not supported; use 1.0 (off).")
    if options.model_extra:
        logger.warning("ollama: ignoring unknown options: %s", ", ".join(sorted(options.model_extra)))
    values = {ours: getattr(options, theirs) for theirs, ours in _SAMPLING.items()}
    return {k: v for k, v in values.items() if v is not None}


def apply_limits(request: GenerationRequest, options: Options | None, max_model_len: int | None) -> None:
    """Set the request's output budget from `num_predict` (capped by the context, never an error)."""
    num_predict = options.num_predict if options is not None else None
    if num_predict is None:
        return
    if max_model_len is None:  # a remote engine: its server caps the reply at its context
        if num_predict <= 0:
            return
        budget = num_predict
    else:
        budget = max_model_len if num_predict <= 0 else min(num_predict, max_model_len)
    request.sampling = dataclasses.replace(
        request.sampling, max_new_tokens=budget, max_new_tokens_requested=False, max_length=None
    )


@contextmanager
def ollama_field_names() -> Iterator[None]:
    """Re-raise request errors naming chatplex's argument (`repetition_penalty:`) with Ollama's field instead."""
    try:
        yield
    except InvalidRequestError as e:
        ours = e.param
        if ours not in _FIELDS:
            raise
        theirs = _FIELDS[ours]
        e.message = e.message.replace(f"{ours}:", f"{theirs}:", 1)
        e.args = (e.message,)
        e.param = theirs
        raise
