"""Load a model and tokenizer for the Hugging Face engine and pick the device and dtype."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from chatplex.config import ModelArguments
from chatplex.errors import ConfigError
from chatplex.models.embedded import EMBEDDED_NAME, embedded_model_dir

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is available; use auto or cpu.", param="device")
    return torch.device(name)


def model_source(args: ModelArguments) -> tuple[str, str | None, str]:
    """(directory or hub id, gguf file name or None, display name)."""
    path = args.model_name_or_path
    if path is None:
        return embedded_model_dir(), None, EMBEDDED_NAME
    path = os.path.expanduser(path)
    if path.endswith(".gguf"):
        folder, name = os.path.split(os.path.abspath(path))
        return folder, name, name[: -len(".gguf")]
    return path, None, os.path.basename(os.path.normpath(path)) or path


def load_tokenizer(args: ModelArguments) -> Any:
    from transformers import AutoTokenizer

    source, gguf, _ = model_source(args)
    if gguf is None and os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise ConfigError(
            f"model_name_or_path: {source!r} has no config.json; give a Hugging Face model directory or a .gguf file.",
            param="model_name_or_path",
        )
    try:
        return AutoTokenizer.from_pretrained(
            source, gguf_file=gguf, trust_remote_code=args.trust_remote_code, revision=args.model_revision,
            cache_dir=args.cache_dir,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"model_name_or_path: cannot load a tokenizer from {source!r}: {e}", param="model_name_or_path") from e


def load_model(args: ModelArguments, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a CLI or server start-up should not print transformers' loading bars

    source, gguf, _ = model_source(args)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            gguf_file=gguf,
            dtype=dtype,
            trust_remote_code=args.trust_remote_code,
            revision=args.model_revision,
            cache_dir=args.cache_dir,
        )
    except OSError as e:
        raise ConfigError(
            f"model_name_or_path: cannot load {args.model_name_or_path!r} ({e}). chatplex loads local models only; "
            "give a directory with config.json and weights, or a .gguf file.",
            param="model_name_or_path",
        ) from e
    if gguf is not None:  # dequantised GGUF weights are plain tensors; drop the quantizer that loaded them
        model.hf_quantizer = None
    return model.to(device).eval()


def _time_forward(model: Any, device: torch.device, reps: int = 3) -> float:
    ids = torch.randint(0, model.config.get_text_config().vocab_size, (8, 16), device=device)
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)  # warm-up
        start = time.perf_counter()
        for _ in range(reps):
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return time.perf_counter() - start


def resolve_dtype(args: ModelArguments, model_fp32: Any | None, device: torch.device) -> torch.dtype:
    """`infer_dtype: auto`: bfloat16 on GPUs that have it; on CPU, whichever of fp32/bf16 runs faster here."""
    if args.infer_dtype != "auto":
        return DTYPES[args.infer_dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if model_fp32 is None:
        return torch.float32
    fp32 = _time_forward(model_fp32, device)
    model_bf16 = model_fp32.to(torch.bfloat16)
    bf16 = _time_forward(model_bf16, device)
    model_bf16.to(torch.float32)
    choice = torch.bfloat16 if bf16 < fp32 * 0.9 else torch.float32
    logger.info("infer_dtype auto: fp32 %.3fs, bf16 %.3fs on this CPU -> %s", fp32, bf16, choice)
    return choice
