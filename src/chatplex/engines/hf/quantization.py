"""Quantized weights in the Hugging Face engine: what `from_pretrained` is given, and what a loaded model holds.

Both kinds load through transformers' quantizer registry, so each method's layers are the library's own:
- quantizing while loading (`quantization_bit`, LLaMA-Factory's keys; checked in engines/quantization_keys.py):
  bitsandbytes 8-bit (LLM.int8) or 4-bit (NF4/FP4, double quantization), on a GPU or a CPU; EETQ 8-bit on a GPU.
- checkpoints quantized beforehand (config.json has `quantization_config`: GPTQ, AWQ, FP8, compressed-tensors,
  bitsandbytes saves): loaded as they are; `quantization_bit` is then ignored with a warning (LLaMA-Factory's rule).

The engine's own parts sit around the quantized linear layers, not in them: paged attention, the KV cache, the
sampler and per-request LoRA hooks (peft's quantized LoRA layers) work unchanged. One exception: FP8 layers run
on chatplex's Triton kernel (fp8_matmul.py) on GPUs with float8 tensor cores, because transformers' own kernel is
downloaded from the Hub at the first step; elsewhere FP8 loads dequantized. packed_linear leaves the
quantized layers alone (it packs exact nn.Linear only, and not compressed-tensors' layers, which quantize their
inputs in their forward). A quantized model's adapter stays unmerged (merging into
quantized weights rounds it away; LLaMA-Factory keeps it as a live adapter too).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from chatplex.config import ModelArguments
from chatplex.engines.hf import fp8_matmul
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
        if saved.get("quant_method") == "fp8":
            return _fp8_kwargs(saved, source, dtype, device)
        if saved.get("quant_method") == "compressed-tensors":
            _require("compressed_tensors", "compressed-tensors", "model_name_or_path")
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


# config.json keys of mixture-of-experts models: transformers runs their FP8 experts on its Hub kernel only.
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


def _fp8_kwargs(saved: dict[str, Any], source: str, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """FP8 checkpoints keep their float8 weights where chatplex's kernel (fp8_matmul.py) runs them, and load
    dequantized elsewhere (as LLaMA-Factory loads every FP8 checkpoint): transformers' own FP8 matmul is a kernel
    fetched from the Hugging Face Hub at the first step, which a machine without the Hub would fail at."""
    if device.type != "cuda":
        why = f"{device.type} has no float8 matmul"
    elif fp8_matmul.triton is None:
        why = "Triton is not installed"
    elif not fp8_matmul.available(device):
        major, minor = torch.cuda.get_device_capability(device)
        why = f"float8 tensor cores need compute capability 8.9 (this GPU has {major}.{minor})"
    elif _has_experts(source):
        why = "its experts run on transformers' kernel from the Hugging Face Hub only (chatplex's runs linear layers)"
    else:
        why = fp8_matmul.supports(saved)
    if not why:
        return {}
    from transformers import FineGrainedFP8Config

    logger.warning("FP8 weights run dequantized to %s: %s", str(dtype).removeprefix("torch."), why)
    return {"quantization_config": FineGrainedFP8Config(dequantize=True)}


def _has_experts(source: str) -> bool:
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    return any(config.get(key) or (config.get("text_config") or {}).get(key) for key in _EXPERT_KEYS)


def _decompress(model: Any) -> None:
    """compressed-tensors checkpoints run decompressed in transformers 5: a hook on the model's forward turns each
    layer dense at its first call (the activations' own quantization, FP8 per token, stays in the layers). chatplex
    sizes the KV cache and captures CUDA graphs over the weights as they will be, and its prefill calls the inner
    model (not the hooked forward), so it decompresses right after loading. Decompressing leaves compressed-tensors'
    offload wrappers on every module (a parameter read ~7x slower); the weights are on the device, so they go."""
    if getattr(model, "ct_decompress_hook", None) is None:
        return
    from compressed_tensors.offload import remove_dispatch

    logger.warning("compressed-tensors weights run decompressed (transformers 5 has no compressed matmul for them)")
    model.hf_quantizer.compressor.decompress_model(model)
    remove_dispatch(model)


def prepare(model: Any, device: torch.device, dtype: torch.dtype) -> None:
    """After loading: compressed-tensors layers decompressed; FP8 layers that kept their float8 weights on
    chatplex's kernel, once it has passed a check on this GPU (else dequantized to `dtype`, as they would load
    without it)."""
    _decompress(model)
    others = fp8_matmul.other_fp8_modules(model)
    if others:  # reached only if _has_experts missed a model's experts
        raise ConfigError(
            f"model_name_or_path: this FP8 checkpoint's {', '.join(sorted(others))} layers run on transformers' FP8 "
            "kernel, which comes from the Hugging Face Hub and is not used here; serve a bf16 checkpoint of the "
            "model, or its FP8 checkpoint with infer_backend vllm.",
            param="model_name_or_path",
        )
    layers = fp8_matmul.fp8_layers(model)
    if not layers:
        return
    failed = fp8_matmul.check(device, {fp8_matmul.block_size(layer) for layer in layers})
    if failed:
        count = fp8_matmul.dequantize(model, dtype)
        logger.warning(
            "FP8 weights: %d layers run dequantized: chatplex's FP8 kernel failed its check (%s)", count, failed
        )
    else:
        logger.info("FP8 weights: %d linear layers run on chatplex's Triton FP8 kernel", fp8_matmul.install(model))


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


def _require(module: str, method: str, param: str = "quantization_bit") -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        what = f"quantization_method {method}" if param == "quantization_bit" else f"a {method} checkpoint"
        raise ConfigError(f"{param}: {what} needs {module}: {missing_package_hint(method)}.", param=param)


def missing_package_hint(method: str) -> str:
    """What to install for a quantization method transformers could not load."""
    return {
        "bitsandbytes": _INSTALL,
        "bnb": _INSTALL,
        "compressed-tensors": _INSTALL,
        "gptq": "pip install optimum gptqmodel (about 400 MB with its dependencies; README, Quantized models)",
        "awq": "pip install gptqmodel (transformers 5 loads AWQ through it; README, Quantized models)",
        "eetq": "pip install kernels (EETQ's kernels come from the Hugging Face Hub; GPU only)",
    }.get(method, f"the package transformers names for {method}")
