"""Multimodal models in the Hugging Face engine: each family turns a request's media into prompt ids plus
per-request inputs at admission, and splices the media embeddings into a step's flat batch at run time.

    base.py         MediaFamily, the interface every family implements, and the shared embedding splice
    qwen_vl.py      Qwen2-VL / Qwen2.5-VL: images and videos, M-RoPE (3-D) positions
    qwen3_vl.py     Qwen3-VL: as above, plus DeepStack features and per-frame timestamps in video prompts
    qwen_omni.py    Qwen2.5-Omni's thinker: images, videos and audio in one prompt, M-RoPE positions
    qwen2_audio.py  Qwen2-Audio: audio clips, 1-D positions
    llava.py        LLaVA and LLaVA-NeXT (anyres tiles): images, 1-D positions
    gemma3.py       Gemma 3: images whose tokens attend to each other both ways (bidirectional prefill spans)

A family is picked by the checkpoint's `model_type`; the engine asks this package for the family object of a
loaded model (`load_family`). Which media a request carries is chatplex.media's `media_items`.
"""

from __future__ import annotations

import importlib
from typing import Any

from chatplex.engines.hf.multimodal.base import MediaFamily
from chatplex.media import MediaPolicy

# model_type -> "module:Class" of its family (modules import lazily: each pulls its own transformers classes).
FAMILIES: dict[str, str] = {
    "qwen2_vl": "qwen_vl:VisionLanguage",
    "qwen2_5_vl": "qwen_vl:VisionLanguage",
    "qwen2_audio": "qwen2_audio:AudioLanguage",
    "qwen2_5_omni_thinker": "qwen_omni:OmniThinker",
    "qwen2_5_omni": "qwen_omni:OmniThinker",
    "llava": "llava:Llava",
    "llava_next": "llava:LlavaNext",
    "gemma3": "gemma3:Gemma3",
    "qwen3_vl": "qwen3_vl:Qwen3VisionLanguage",
}


def model_kind(config: Any) -> str | None:
    """The multimodal family chatplex serves this config as (its model_type), or None for a text-only model."""
    kind = getattr(config, "model_type", None)
    return kind if kind in FAMILIES else None


def family_class(kind: str) -> type[MediaFamily]:
    module, name = FAMILIES[kind].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def load_family(model: Any, tokenizer: Any, source: str, policy: MediaPolicy | None = None) -> MediaFamily | None:
    """The family object serving this loaded model's media, or None for a text-only model."""
    kind = model_kind(model.config)
    return family_class(kind).load(model, tokenizer, source, policy) if kind else None


__all__ = ["FAMILIES", "MediaFamily", "family_class", "load_family", "model_kind"]
