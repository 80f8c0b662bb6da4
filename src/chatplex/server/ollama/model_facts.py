"""What `/api/tags`, `/api/show` and `/api/ps` say about the served model, read from its files once.

Ollama describes a model by its GGUF; chatplex serves safetensors directories, GGUF files and remote servers, so
each fact is read where it can be (config.json, safetensors headers, file sizes) and left empty where it cannot
(a hub id not in the local cache, a remote engine).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chatplex.chat_model import ChatModel
from chatplex.server.ollama.schemas import ModelDetails

_WEIGHTS = (".safetensors", ".bin", ".gguf", ".pt")
_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}
_GGUF_QUANT = re.compile(r"(?i)(iq\d\w*|q\d(_[a-z0-9]+)*|bf16|f16|f32)(?=\.gguf$)")
_MAX_HEADER = 100 * 1024 * 1024  # a safetensors header larger than this is not one


@dataclass(frozen=True)
class ModelFacts:
    path: str  # the directory or .gguf file ("" when there is none here)
    format: str
    size: int
    parameter_count: int | None
    quantization_level: str
    modified_at: str
    digest: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return str(self.config.get("model_type", ""))

    def details(self) -> ModelDetails:
        return ModelDetails(
            format=self.format,
            family=self.family,
            families=[self.family] if self.family else None,
            parameter_size=parameter_size(self.parameter_count),
            quantization_level=self.quantization_level,
        )


def parameter_size(count: int | None) -> str:
    """Ollama's way: `135M`, `7.6B`."""
    if not count:
        return ""
    if count >= 10**9:
        return f"{count / 1e9:.1f}B"
    return f"{count / 1e6:.0f}M"


def _model_path(chat_model: ChatModel) -> str:
    args = chat_model.args.model
    if args.model_name_or_path is None:
        from chatplex.models import embedded

        return embedded.embedded_gguf_path() if args.infer_backend == "llamacpp" else embedded.embedded_model_dir()
    path = os.path.expanduser(args.model_name_or_path)
    if os.path.exists(path):
        return path
    try:  # a hub id: its snapshot in the local cache, if any; never a download here
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json", cache_dir=args.cache_dir)
    except Exception:  # noqa: BLE001 - no cache, no hub library, an odd id: just no facts
        return ""
    return os.path.dirname(cached) if isinstance(cached, str) else ""


def _safetensors_parameters(path: str) -> int:
    # The header alone (8-byte length, then JSON) gives every tensor's shape; no weights are read.
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size < _MAX_HEADER:
            return 0
        header = json.loads(f.read(size))
    return sum(math.prod(v.get("shape", [])) for k, v in header.items() if k != "__metadata__")


def _weight_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return []
    return [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(_WEIGHTS)]


def _read_config(path: str) -> dict[str, Any]:
    config = os.path.join(path, "config.json")
    try:
        with open(config) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _quantization(chat_model: ChatModel, path: str, config: dict[str, Any]) -> str:
    if path.endswith(".gguf"):
        found = _GGUF_QUANT.search(os.path.basename(path))
        return found.group(1).upper() if found else ""
    quant = config.get("quantization_config")
    if isinstance(quant, dict) and quant.get("quant_method"):
        return str(quant["quant_method"]).upper()
    margs = chat_model.args.model
    if margs.quantization_bit is not None:  # quantized while loading: bitsandbytes' NF4/FP4, or INT8
        return margs.quantization_type.upper() if margs.quantization_bit == 4 else "INT8"
    dtype = chat_model.args.model.infer_dtype
    if dtype == "auto":
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "")
    return _DTYPES.get(dtype, dtype.upper())


# Per model, read once; weak keys, so a closed model is not kept alive (with its engine) by this cache.
_FACTS: weakref.WeakKeyDictionary[ChatModel, ModelFacts] = weakref.WeakKeyDictionary()


def _facts_of(chat_model: ChatModel) -> ModelFacts:
    if chat_model not in _FACTS:
        _FACTS[chat_model] = _read_facts(chat_model)
    return _FACTS[chat_model]


def _read_facts(chat_model: ChatModel) -> ModelFacts:
    path = _model_path(chat_model)
    files = _weight_files(path)
    size = sum(os.path.getsize(f) for f in files)
    params = sum(_safetensors_parameters(f) for f in files if f.endswith(".safetensors")) or None
    config = _read_config(path) if os.path.isdir(path) else {}
    mtime = os.path.getmtime(path) if path else 0.0
    fmt = "gguf" if path.endswith(".gguf") else ("safetensors" if params else "")
    stamp = f"{chat_model.model_name}:{path}:{size}:{mtime}"
    return ModelFacts(
        path=path,
        format=fmt,
        size=size,
        parameter_count=params,
        quantization_level=_quantization(chat_model, path, config),
        modified_at=datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z"),
        digest=hashlib.sha256(stamp.encode()).hexdigest(),
        config=config,
    )


def model_facts(chat_model: ChatModel) -> ModelFacts:
    """The served model's facts (read on first use, then kept: the files do not change while it is served)."""
    return _facts_of(chat_model)


# config.json key -> Ollama's model_info key under the architecture's prefix
_INFO_KEYS = {
    "hidden_size": "embedding_length",
    "num_hidden_layers": "block_count",
    "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv",
    "intermediate_size": "feed_forward_length",
    "vocab_size": "vocab_size",
    "rope_theta": "rope.freq_base",
}


def model_info(facts: ModelFacts, context_length: int | None) -> dict[str, Any]:
    """`/api/show`'s `model_info`: `general.*` and `<architecture>.*` keys, as Ollama names them."""
    arch = facts.family or "unknown"
    info: dict[str, Any] = {"general.architecture": arch}
    if facts.parameter_count:
        info["general.parameter_count"] = facts.parameter_count
    if context_length:
        info[f"{arch}.context_length"] = context_length
    for key, name in _INFO_KEYS.items():
        if isinstance(facts.config.get(key), (int, float)):
            info[f"{arch}.{name}"] = facts.config[key]
    return info
