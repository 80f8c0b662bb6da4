"""The quantization keys on their own (config time, no torch): LLaMA-Factory's on-the-fly keys and kv_cache_dtype.

LLaMA-Factory's inference quantizes while loading with `quantization_bit` and `quantization_method` (bnb, hqq,
eetq); its other methods (gptq, awq, fp8, ...) name checkpoints that are already quantized, which load as they are
without any key. chatplex takes the same keys and refuses, with the reason, what cannot run:
    bnb    4- or 8-bit, on a GPU and on a CPU (bitsandbytes' CPU backend)
    eetq   8-bit, GPU only (transformers' EETQ quantizer refuses a CPU)
    hqq    refused: transformers 5 (which chatplex pins) cannot quantize with HQQ while loading
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatplex.errors import ConfigError

if TYPE_CHECKING:
    from chatplex.config import ModelArguments

# LLaMA-Factory's QuantizationMethod values.
ON_THE_FLY = ("bnb", "eetq", "hqq")
PRE_QUANTIZED = ("gptq", "awq", "aqlm", "quanto", "mxfp4", "fp8")
QUANTIZATION_TYPES = ("nf4", "fp4")
# vLLM's names; fp8 is e4m3.
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")


def check_quantization_keys(margs: ModelArguments) -> None:
    method, bits = margs.quantization_method, margs.quantization_bit
    if method not in ON_THE_FLY + PRE_QUANTIZED:
        raise ConfigError(
            f"quantization_method: {method!r} is not valid; choose one of {', '.join(ON_THE_FLY)} "
            f"(LLaMA-Factory's also names {', '.join(PRE_QUANTIZED)}, for checkpoints already quantized).",
            param="quantization_method",
        )
    if margs.quantization_type not in QUANTIZATION_TYPES:
        raise ConfigError(
            f"quantization_type: {margs.quantization_type!r} is not valid; choose nf4 or fp4 (bitsandbytes 4-bit).",
            param="quantization_type",
        )
    if margs.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ConfigError(
            f"kv_cache_dtype: {margs.kv_cache_dtype!r} is not valid; choose one of {', '.join(KV_CACHE_DTYPES)}.",
            param="kv_cache_dtype",
        )
    if margs.kv_cache_dtype != "auto" and margs.infer_backend not in ("huggingface", "vllm"):
        raise ConfigError(
            f"kv_cache_dtype: the {margs.infer_backend} engine sets its cache types itself (llama.cpp: type_k and "
            "type_v in engine_config); leave kv_cache_dtype at auto.",
            param="kv_cache_dtype",
        )
    if margs.quantization_device_map is not None:
        raise ConfigError(
            "quantization_device_map: chatplex's Hugging Face engine runs a model on one device (`device`); leave "
            "it out, or spread a model over several GPUs with infer_backend vllm.",
            param="quantization_device_map",
        )
    if bits is None:
        return
    if margs.infer_backend != "huggingface":
        raise ConfigError(
            f"quantization_bit: quantizing while loading is the huggingface engine's; for {margs.infer_backend} "
            "give a pre-quantized checkpoint (vLLM reads its quantization_config; llama.cpp a quantized GGUF), or "
            "vLLM's own setting in vllm_config (e.g. quantization: bitsandbytes).",
            param="quantization_bit",
        )
    if margs.dummy_weights is not None:
        raise ConfigError(
            "quantization_bit: not with dummy_weights (random weights are built in the model's dtype); give a "
            "checkpoint directory.",
            param="quantization_bit",
        )
    if margs.model_name_or_path is not None and margs.model_name_or_path.endswith(".gguf"):
        raise ConfigError(
            "quantization_bit: a GGUF file is quantized already; serve it with infer_backend llama.cpp, or give the "
            "full-precision checkpoint to quantize.",
            param="quantization_bit",
        )
    if method in PRE_QUANTIZED:
        raise ConfigError(
            f"quantization_method: {method} names checkpoints quantized beforehand, which load as they are (their "
            "config.json says how); leave quantization_bit out for them, or quantize while loading with bnb.",
            param="quantization_method",
        )
    if method == "hqq":
        raise ConfigError(
            "quantization_method: hqq cannot quantize while loading in transformers 5 (which chatplex uses: its HQQ "
            "quantizer is 'not available yet') and needs a GPU; use bnb (4 or 8 bits, GPU or CPU).",
            param="quantization_method",
        )
    if method == "eetq" and bits != 8:
        raise ConfigError(f"quantization_bit: EETQ is 8-bit only, got {bits}.", param="quantization_bit")
    if method == "bnb" and bits not in (4, 8):
        raise ConfigError(
            f"quantization_bit: bitsandbytes quantizes to 4 or 8 bits, got {bits!r}.", param="quantization_bit"
        )
