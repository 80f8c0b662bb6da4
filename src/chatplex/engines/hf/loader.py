"""Load a model and tokenizer for the Hugging Face engine and pick the device and dtype."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from chatplex.config import ModelArguments
from chatplex.engines.hf import quantization, scoring
from chatplex.engines.hf.lora import LoraAdapters, merge_adapters
from chatplex.engines.hf.scoring import ScoreFormat
from chatplex.errors import ConfigError
from chatplex.models.embedded import EMBEDDED_NAME, embedded_model_dir

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: cuda was asked for but no CUDA device is available; use auto or cpu.", param="device"
        )
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


def hub_kwargs(args: ModelArguments) -> dict[str, Any]:
    """What every `from_pretrained` call takes from the arguments: where and how to fetch from the Hub."""
    return {
        "trust_remote_code": args.trust_remote_code,
        "revision": args.model_revision,
        "cache_dir": args.cache_dir,
        "token": args.hf_hub_token,
    }


def load_tokenizer(args: ModelArguments) -> Any:
    from transformers import AutoTokenizer

    source, gguf, _ = model_source(args)
    if gguf is None and os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise ConfigError(
            f"model_name_or_path: {source!r} has no config.json; give a Hugging Face model directory or a .gguf file.",
            param="model_name_or_path",
        )
    try:
        return AutoTokenizer.from_pretrained(source, gguf_file=gguf, **hub_kwargs(args))
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model_name_or_path: cannot load a tokenizer from {source!r}: {e}", param="model_name_or_path"
        ) from e


def load_model(args: ModelArguments, device: torch.device, dtype: torch.dtype, classifier: bool = False) -> Any:
    """The model on `device` in eval mode: a causal LM, or with `classifier` its *ForSequenceClassification class."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a CLI or server start-up should not print transformers' loading bars

    source, gguf, _ = model_source(args)
    auto_class, extra = (
        (AutoModelForSequenceClassification, {}) if classifier else _generative_class(args, source, gguf)
    )
    if args.rope_scaling is not None:
        extra["config"] = scaled_rope_config(args, source, gguf)
    quantized = quantization.wants_quantized(args, source, gguf)
    if quantized:  # quantizers place (and quantize) each weight as it loads, straight onto the device
        extra.update(quantization.load_kwargs(args, source, gguf, dtype, device), device_map={"": device})
    try:
        model = auto_class.from_pretrained(source, gguf_file=gguf, dtype=dtype, **hub_kwargs(args), **extra)
    except OSError as e:
        raise ConfigError(
            f"model_name_or_path: cannot load {args.model_name_or_path!r} ({e}). chatplex loads local models only; "
            "give a directory with config.json and weights, or a .gguf file.",
            param="model_name_or_path",
        ) from e
    except (torch.OutOfMemoryError, torch.AcceleratorError):
        raise  # the device's own failure, not a quantizer's refusal
    except (ImportError, RuntimeError, ValueError) as e:
        if not quantized:
            raise
        raise quantization.load_error(e, source, args) from e
    if gguf is not None:  # dequantised GGUF weights are plain tensors; drop the quantizer that loaded them
        model.hf_quantizer = None
    if quantized:
        logger.info("Weights quantized: %s", quantization.describe(model) or "no quantizer applied")
        quantization.prepare(model, device, dtype)
        return model.eval()
    return model.to(device).eval()


def scaled_rope_config(args: ModelArguments, source: str, gguf: str | None) -> Any:
    """The model's config with LLaMA-Factory's RoPE scaling for inference: `rope_scaling` as the RoPE type, factor 2,
    the context twice as long; dynamic and yarn keep the original length, llama3 also its frequency factors."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, gguf_file=gguf, **hub_kwargs(args))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = dict(getattr(text, "rope_parameters", None) or {})
    original = params.get("original_max_position_embeddings") or getattr(text, "max_position_embeddings", None)
    if original is None:
        raise ConfigError(
            "rope_scaling: this model's config has no max_position_embeddings to scale.", param="rope_scaling"
        )
    factor = 2.0
    params.update(rope_type=args.rope_scaling, factor=factor)
    if args.rope_scaling in ("dynamic", "yarn", "llama3"):
        params["original_max_position_embeddings"] = original
    if args.rope_scaling == "llama3":
        params.update(low_freq_factor=1.0, high_freq_factor=4.0)
    text.rope_parameters = params  # keeps rope_theta, which setting the old `rope_scaling` name would drop
    text.max_position_embeddings = int(original * factor)
    logger.info(
        "RoPE scaling %s x%.0f: max length %d -> %d", args.rope_scaling, factor, original, int(original * factor)
    )
    return config


def _generative_class(args: ModelArguments, source: str, gguf: str | None) -> tuple[Any, dict[str, Any]]:
    """The class to load with, and extra `from_pretrained` arguments. Multimodal checkpoints load through their
    family's class (the image-text-to-text Auto class, or their own): to transformers they are not causal LMs."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    from chatplex.engines.hf.multimodal import family_class, model_kind

    if gguf is None:
        try:
            config = AutoConfig.from_pretrained(source, **hub_kwargs(args))
        except (OSError, ValueError):
            config = None  # from_pretrained below reports it
        if config is not None and model_kind(config):
            family = family_class(config.model_type)
            return getattr(transformers, family.model_class), family.checkpoint_kwargs(config)
    return AutoModelForCausalLM, {}


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
    if args.batch_invariant:
        return torch.bfloat16  # the dtype it holds in on a CPU (setup.py)
    if model_fp32 is None:
        return torch.float32
    fp32 = _time_forward(model_fp32, device)
    model_bf16 = model_fp32.to(torch.bfloat16)
    bf16 = _time_forward(model_bf16, device)
    model_bf16.to(torch.float32)
    choice = torch.bfloat16 if bf16 < fp32 * 0.9 else torch.float32
    logger.info("infer_dtype auto: fp32 %.3fs, bf16 %.3fs on this CPU -> %s", fp32, bf16, choice)
    return choice


def score_format(args: ModelArguments) -> ScoreFormat | None:
    """How the model scores (None: it generates); a ConfigError when asked to score a model with no head."""
    source, _, _ = model_source(args)
    return scoring.detect(source, args.adapter_paths, args.task)


def attach_adapters_and_head(
    model: Any, args: ModelArguments, fmt: ScoreFormat | None, device: torch.device, dtype: torch.dtype
) -> tuple[Any, torch.nn.Module | None, LoraAdapters | None, str | None]:
    """Apply LoRA adapters and find the score head: (model, score head, resident adapters, default adapter name).

    adapter_name_or_path is merged into the weights (LLaMA-Factory's behaviour) unless merge_lora is false, when
    its single adapter stays resident and serves requests that name no adapter. Reward models always merge.
    """
    paths = args.adapter_paths
    if paths and quantization.is_quantized(model):
        # LLaMA-Factory's rule for quantized models (QLoRA): one adapter, kept live; merging would round it away.
        if len(paths) > 1 or fmt is not None:
            raise ConfigError(
                "adapter_name_or_path: a quantized model takes one adapter, kept unmerged "
                f"({'a reward model merges its adapters' if fmt is not None else f'{len(paths)} given'}); merge "
                "them into the full-precision model first (llamafactory-cli export), then quantize.",
                param="adapter_name_or_path",
            )
        if args.merge_lora:
            logger.info("The adapter stays unmerged on quantized weights (as LLaMA-Factory does)")
    elif paths and (args.merge_lora or fmt is not None):
        model = merge_adapters(model, paths).to(device)
        paths = []
    head = None
    if fmt is not None:
        if args.lora_modules:
            raise ConfigError(
                "lora_modules: a reward model scores with its adapters merged; give them as adapter_name_or_path.",
                param="lora_modules",
            )
        if fmt.kind == "sequence_classification":
            head = scoring.classifier_head(model)
        else:
            hidden = model.config.get_text_config().hidden_size
            head = scoring.load_value_head(fmt.value_head_path or "", hidden, dtype, device)
    lora = default = None
    if paths or args.lora_modules:
        lora = LoraAdapters(model, args.max_loras + len(paths))
        for path in paths:
            default = os.path.basename(os.path.normpath(path))
            lora.load(default, path, "adapter_name_or_path")
        for name, path in args.lora_module_paths.items():
            lora.load(name, path, "lora_modules")
    return model, head, lora, default
