"""Quantized checkpoints written in a test from a plain one: block-wise FP8 by hand (transformers quantizes to FP8
only on a GPU) and compressed-tensors schemes through compressed-tensors' own API (llm-compressor's format)."""

from __future__ import annotations

import torch


def write_fp8_checkpoint(source: str, target) -> None:
    """An FP8 checkpoint in the block-wise layout of DeepSeek-V3 / Qwen3-FP8 releases (transformers' `fp8` method:
    float8_e4m3fn weights and one inverse scale per 32x32 block). transformers quantizes only on a GPU, so the
    linear layers are quantized here by that layout's definition."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    block, finite = 32, torch.finfo(torch.float8_e4m3fn).max
    tensors = load_file(f"{source}/model.safetensors")
    out = {}
    for name, weight in tensors.items():
        if ".layers." in name and name.endswith("proj.weight"):
            rows, cols = weight.shape
            tiles = weight.float().reshape(rows // block, block, cols // block, block)
            scale = tiles.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-12) / finite
            out[name] = (tiles / scale).reshape(rows, cols).to(torch.float8_e4m3fn)
            out[name.removesuffix("weight") + "weight_scale_inv"] = scale.reshape(rows // block, cols // block)
        else:
            out[name] = weight
    save_file(out, f"{target}/model.safetensors", metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(f"{source}/{name}", target)
    with open(f"{source}/config.json") as f:
        config = json.load(f)
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                     "weight_block_size": [block, block]}
    with open(f"{target}/config.json", "w") as f:
        json.dump(config, f)


def compressed_tensors_scheme(name: str) -> dict:
    """compressed-tensors' QuantizationScheme fields for: w4a16 (GPTQ-style int4, groups of 32, packed), w8a16
    (int8 per output channel), fp8 (float8 per channel, activations per token at run time)."""
    from compressed_tensors.quantization import QuantizationArgs

    if name == "w4a16":
        return {"weights": QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=32, symmetric=True)}
    if name == "w8a16":
        return {"weights": QuantizationArgs(num_bits=8, type="int", strategy="channel", symmetric=True)}
    return {"weights": QuantizationArgs(num_bits=8, type="float", strategy="channel", symmetric=True),
            "input_activations": QuantizationArgs(num_bits=8, type="float", strategy="token", dynamic=True,
                                                  symmetric=True)}


def write_compressed_tensors_checkpoint(source: str, target, scheme: str) -> None:
    """The checkpoint as llm-compressor saves it, with round-to-nearest scales from each weight's own range (its
    calibration data only moves the scales; the format and the loading path are the same)."""
    import shutil

    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    groups = {"group_0": QuantizationScheme(targets=["Linear"], **compressed_tensors_scheme(scheme))}
    apply_quantization_config(model, QuantizationConfig(config_groups=groups, ignore=["lm_head"]))
    for module in model.modules():
        args = getattr(getattr(module, "quantization_scheme", None), "weights", None)
        if args is None:
            continue
        weight = module.weight.detach()
        grouped = args.strategy == "group"
        if grouped:
            weight = weight.unflatten(-1, (-1, args.group_size))
        scale, zero = calculate_qparams(weight.amin(-1, keepdim=not grouped), weight.amax(-1, keepdim=not grouped),
                                        args)
        module.weight_scale.data.copy_(scale)
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data.copy_(zero)
        module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(target)
    compressor.update_config(target)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{source}/{name}", target)
