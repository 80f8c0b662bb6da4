"""What a sentence-transformers checkpoint says about itself: pooling, normalisation, prompts, length, Matryoshka.

A sentence-transformers model is a transformers model plus `modules.json`, which lists its modules in order:
`Transformer` (the weights in the folder itself), `Pooling` (its `config.json` picks the pooling mode),
optionally `Normalize`. `sentence_bert_config.json` caps the input length; `config_sentence_transformers.json`
holds named prompts ("query": "Instruct: ...") to put before inputs. Other modules (Dense projections and the
like) are refused by name rather than silently skipped: the vectors would be wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from chatplex.errors import ConfigError

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len", "last")
# 1_Pooling/config.json's flags -> chatplex's mode names
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "last",
}
_TRANSFORMER, _POOLING, _NORMALIZE = "Transformer", "Pooling", "Normalize"


@dataclass
class EmbeddingSpec:
    """How to turn the transformer's hidden states into the model's sentence embedding."""

    pooling: str = "mean"
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    max_seq_length: int | None = None
    # Matryoshka: None = not trained for truncation; [] = any size; else the sizes it was trained for.
    matryoshka_dimensions: list[int] | None = None


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"model_name_or_path: cannot read {path}: {e}", param="model_name_or_path") from e


def _module_kind(module: dict[str, Any]) -> str:
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def has_pooling_module(model_dir: str) -> bool:
    """Whether the folder is a sentence-transformers embedding model (modules.json lists a Pooling module)."""
    modules = _read_json(os.path.join(model_dir, "modules.json")) if os.path.isdir(model_dir) else None
    return isinstance(modules, list) and any(_module_kind(m) == _POOLING for m in modules if isinstance(m, dict))


def _pooling_mode(config: dict[str, Any], path: str) -> str:
    modes = [mode for flag, mode in _POOLING_FLAGS.items() if config.get(flag)]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in _POOLING_FLAGS]
    if len(modes) != 1 or others:
        raise ConfigError(
            f"model_name_or_path: {path} asks for pooling {', '.join(modes + others) or 'none'}; chatplex pools "
            f"with exactly one of {', '.join(_POOLING_FLAGS)}.",
            param="model_name_or_path",
        )
    return modes[0]


def _matryoshka(config: dict[str, Any]) -> list[int] | None:
    """vLLM's convention in config.json: `matryoshka_dimensions` (the trained sizes) or `is_matryoshka: true`."""
    dims = config.get("matryoshka_dimensions")
    if isinstance(dims, list) and dims:
        return sorted(int(d) for d in dims)
    return [] if config.get("is_matryoshka") else None


def read_spec(model_dir: str) -> EmbeddingSpec:
    """The embedding recipe of a sentence-transformers folder; a ConfigError naming an unsupported module."""
    modules = _read_json(os.path.join(model_dir, "modules.json")) or []
    spec = EmbeddingSpec()
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = _module_kind(module)
        if kind == _POOLING:
            path = os.path.join(model_dir, module.get("path", ""), "config.json")
            spec.pooling = _pooling_mode(_read_json(path) or {}, path)
        elif kind == _NORMALIZE:
            spec.normalize = True
        elif kind != _TRANSFORMER:
            raise ConfigError(
                f"model_name_or_path: modules.json has a {kind} module, which chatplex cannot run "
                f"(it runs {_TRANSFORMER}, {_POOLING} and {_NORMALIZE}).",
                param="model_name_or_path",
            )
    st_config = _read_json(os.path.join(model_dir, "config_sentence_transformers.json")) or {}
    spec.prompts = {str(k): str(v) for k, v in (st_config.get("prompts") or {}).items()}
    spec.default_prompt_name = st_config.get("default_prompt_name")
    bert_config = _read_json(os.path.join(model_dir, "sentence_bert_config.json")) or {}
    spec.max_seq_length = bert_config.get("max_seq_length")
    spec.matryoshka_dimensions = _matryoshka(_read_json(os.path.join(model_dir, "config.json")) or {})
    return spec
