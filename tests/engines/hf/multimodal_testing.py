"""What the multimodal engine tests share: tiny random models made to react to their inputs, greedy tokens from
transformers' `generate` (the reference) and from chatplex, noise images, and the torchvision gate."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_torchvision = pytest.mark.skipif(
    not HAS_TORCHVISION, reason="needs torchvision for transformers' video processors: run by `make test` in .venv-media"
)


def sharpen_attention(language_model: Any, factor: float = 8.0) -> None:
    """Scale the decoder's query and key projections: random weights otherwise attend almost uniformly, and then
    positions (and so position mistakes) barely change the tokens."""
    with torch.no_grad():
        for layer in language_model.layers:
            layer.self_attn.q_proj.weight.mul_(factor)
            layer.self_attn.k_proj.weight.mul_(factor)


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB image of uniform noise, `size` = (width, height): different seeds give images the towers tell apart."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def generate_tokens(model: Any, inputs: dict[str, Any], max_tokens: int) -> list[int]:
    """The reference: transformers' greedy `generate` on processor outputs; the new token ids."""
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_tokens)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def engine_tokens(chat_model: Any, messages: list[dict], max_tokens: int, **kwargs: Any) -> list[int]:
    """chatplex's greedy tokens for one request, EOS ignored so that every run has `max_tokens` to compare."""
    [response] = chat_model.chat(messages, do_sample=False, max_tokens=max_tokens, ignore_eos=True, **kwargs)
    return response.token_ids
