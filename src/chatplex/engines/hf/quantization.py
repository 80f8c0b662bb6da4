"""Quantized weights in the Hugging Face engine: what `from_pretrained` is given, and what a loaded model holds.

Both kinds load through transformers' quantizer registry, so each method's layers are the library's own:
- quantizing while loading (`quantization_bit`, LLaMA-Factory's keys; checked in engines/quantization_keys.py):
  bitsandbytes 8-bit (LLM.int8) or 4-bit (NF4/FP4, double quantization), on a GPU or a CPU; EETQ 8-bit on a GPU.
- checkpoints quantized beforehand (config.json has `quantization_config`: GPTQ, AWQ, FP8, compressed-tensors,
  bitsandbytes saves): loaded as they are; `quantization_bit` is then ignored with a warning (LLaMA-Factory's rule).

The engine's own parts sit around the quantized linear layers, not in them: paged attention, the KV cache, the
sampler and per-request LoRA hooks (peft's quantized LoRA layers) work unchanged; packed_linear leaves the
quantized layers alone (it packs exact nn.Linear only). A quantized model's adapter stays unmerged (merging into
quantized weights rounds it away; LLaMA-Factory keeps it as a live adapter too).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from chatplex.config import ModelArguments
from chatplex.errors import ConfigError

logger = logging.getLogger(__name__)

_INSTALL = "pip install 'chatplex[quant]'"


def checkpoint_quantization(source: str) -> dict[str, Any] | None:
    """The `quantization_config` of a local checkpoint's config.json (its text config's for media models)."""
    path = os.path.join(source, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        config = json.load(f)
    found = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    return found if isinstance(found, dict) else None


def load_kwargs(
    args: ModelArguments, source: str, gguf: str | None, dtype: torch.dtype, device: torch.device
) -> dict[str, Any]:
    """`from_pretrained` arguments for quantized weights (empty for a plain checkpoint)."""
    if gguf is not None:
        return {}
    saved = checkpoint_quantization(source)
    if saved is not None:
        if args.quantization_bit is not None:
            logger.warning(
                "quantization_bit %s is ignored: %s is quantized already (%s)",
                args.quantization_bit,
                source,
                saved.get("quant_method", "?"),
            )
        if saved.get("quant_method") == "fp8" and device.type == "cuda" and not _fp8_matmul_available():
            # transformers 5 runs FP8 matmuls with a kernel its `kernels` package fetches from the Hugging Face Hub;
            # without it the model would load and then fail at its first step. LLaMA-Factory loads FP8 this way too.
            logger.warning(
                "FP8 weights run dequantized to %s: transformers' FP8 matmul kernel (kernels-community/"
                "finegrained-fp8, fetched from the Hugging Face Hub by the `kernels` package) is not available here",
                str(dtype).removeprefix("torch."),
            )
            from transformers import FineGrainedFP8Config

            return {"quantization_config": FineGrainedFP8Config(dequantize=True)}
        return {}
    if args.quantization_bit is None:
        return {}
    if args.quantization_method == "eetq":
        if device.type != "cuda":
            raise ConfigError(
                f"quantization_method: eetq runs on a GPU only (device here: {device.type}); use bnb on a CPU.",
                param="quantization_method",
            )
        from transformers import EetqConfig

        return {"quantization_config": EetqConfig()}
    from transformers import BitsAndBytesConfig

    _require("bitsandbytes", "bnb")
    if args.quantization_bit == 8:
        # LLM.int8 casts its inputs to float16 and says so at every matmul of every step unless quieted.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=args.double_quantization,
            bnb_4bit_quant_type=args.quantization_type,
        )
    }


def graph_safe(model: Any) -> bool:
    """Whether decode steps over these layers can be captured in CUDA graphs: bitsandbytes' LLM.int8 splits outlier
    columns out per step with host-side work, which a capture refuses; its 4-bit layers and the others capture."""
    config = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    return not getattr(config, "load_in_8bit", False)


def _fp8_matmul_available() -> bool:
    try:
        from transformers.integrations import finegrained_fp8

        load = getattr(finegrained_fp8, "load_finegrained_fp8_kernel", None)
        if load is None:
            return False
        load()
        return True
    except Exception:  # noqa: BLE001 - ImportError, or the Hub unreachable (any error of its client): no kernel
        return False


def wants_quantized(args: ModelArguments, source: str, gguf: str | None) -> bool:
    """Whether the weights will load quantized (asked for, or saved so)."""
    return gguf is None and (args.quantization_bit is not None or checkpoint_quantization(source) is not None)


def is_quantized(model: Any) -> bool:
    return getattr(model, "hf_quantizer", None) is not None


def describe(model: Any) -> str:
    """e.g. 'bitsandbytes 4-bit nf4' or 'fp8'; '' for plain weights."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return ""
    config = quantizer.quantization_config
    method = getattr(config, "quant_method", "?")
    method = str(getattr(method, "value", method))  # transformers' QuantizationMethod enum, or a plain string
    if getattr(config, "load_in_4bit", False):
        return f"{method} 4-bit {config.bnb_4bit_quant_type}"
    if getattr(config, "load_in_8bit", False):
        return f"{method} 8-bit"
    bits = getattr(config, "bits", None)
    return f"{method} {bits}-bit" if bits else method


def load_error(exc: Exception, source: str, args: ModelArguments) -> ConfigError:
    """A quantizer's refusal (a missing package, a device it cannot run on) as a ConfigError that says what to do."""
    saved = checkpoint_quantization(source)
    method = str(saved.get("quant_method", "")) if saved else args.quantization_method
    fix = missing_package_hint(method) if isinstance(exc, ImportError) else "see README, Quantized models"
    what = f"this checkpoint is {method}-quantized" if saved else "quantizing while loading"
    return ConfigError(
        f"model_name_or_path: {what}, and transformers refused: {exc} ({fix}).", param="model_name_or_path"
    )


def _require(module: str, method: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"quantization_bit: quantization_method {method} needs {module}: {missing_package_hint(method)}.",
            param="quantization_bit",
        )


def missing_package_hint(method: str) -> str:
    """What to install for a quantization method transformers could not load."""
    return {
        "bitsandbytes": _INSTALL,
        "bnb": _INSTALL,
        "compressed-tensors": "pip install compressed-tensors",
        "gptq": "pip install optimum gptqmodel (gptqmodel builds its kernels from source; README, Quantized models)",
        "awq": "pip install gptqmodel (transformers 5 loads AWQ through it)",
        "eetq": "pip install kernels (EETQ's kernels come from the Hugging Face Hub; GPU only)",
    }.get(method, f"the package transformers names for {method}")
