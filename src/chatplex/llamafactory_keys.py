"""What chatplex does with each key LLaMA-Factory's inference parser reads (215 in 0.9.5, 224 at its HEAD).

A key is either used with LLaMA-Factory's meaning (a chatplex argument of the same name, or one of the
translations below), ignored with a warning because it only changes training, export or logging, or refused with
a reason and what to use instead. None is dropped silently; tests/test_llamafactory_keys.py checks every key of
LLaMA-Factory's own parser (tests/fixtures/llamafactory/infer_keys.json) against this table.
"""

from __future__ import annotations

import logging
from typing import Any

import yaml

from chatplex.errors import ConfigError

logger = logging.getLogger(__name__)

# Keys that change training, export, data loading or logging, not what a model replies.
TRAINING_ONLY = frozenset(
    [
        "finetuning_type",
        "do_train",
        "do_predict",
        "output_dir",
        "flash_attn",
        "shift_attn",
        "use_unsloth",
        "use_unsloth_gc",
        "enable_liger_kernel",
        "low_cpu_mem_usage",
        "use_fast_tokenizer",
        "resize_vocab",
        "upcast_layernorm",
        "upcast_lmhead_output",
        "disable_gradient_checkpointing",
        "use_reentrant_gc",
        "print_param_status",
        "ms_hub_token",
        "om_hub_token",
        "offload_folder",
        "use_kv_cache",
        "use_v1_kernels",
        "moe_aux_loss_coef",
        "mixture_of_depths",
        "block_diag_attn",
        "compute_dtype",
        "device_map",
        "model_max_length",
        "export_dir",
        "export_size",
        "export_device",
        "export_quantization_bit",
        "export_quantization_dataset",
        "export_quantization_nsamples",
        "export_quantization_maxlen",
        "export_legacy_format",
        "export_hub_model_id",
        "dataset",
        "eval_dataset",
        "dataset_dir",
        "media_dir",
        "cutoff_len",
        "train_on_prompt",
        "mask_history",
        "streaming",
        "buffer_size",
        "mix_strategy",
        "interleave_probs",
        "overwrite_cache",
        "preprocessing_batch_size",
        "preprocessing_num_workers",
        "max_samples",
        "eval_num_beams",
        "ignore_pad_token_for_loss",
        "val_size",
        "eval_on_each_dataset",
        "packing",
        "neat_packing",
        "tokenized_path",
        "data_shared_file_system",
        "init_special_tokens",
        "sglang_lora_backend",
        "freeze_trainable_layers",
        "freeze_trainable_modules",
        "freeze_extra_modules",
        "additional_target",
        "module_dropout",
        "oft_rank",
        "oft_block_size",
        "oft_target",
        "create_new_adapter",
        "lora_alpha",
        "lora_dropout",
        "lora_rank",
        "lora_target",
        "loraplus_lr_ratio",
        "loraplus_lr_embedding",
        "use_rslora",
        "use_dora",
        "pissa_init",
        "pissa_iter",
        "pissa_convert",
        "pref_beta",
        "pref_ftx",
        "pref_bco_weight",
        "pref_loss",
        "dpo_label_smoothing",
        "kto_chosen_weight",
        "kto_rejected_weight",
        "simpo_gamma",
        "ppo_buffer_size",
        "ppo_epochs",
        "ppo_score_norm",
        "ppo_target",
        "ppo_whiten_rewards",
        "ref_model",
        "ref_model_adapters",
        "ref_model_quantization_bit",
        "reward_model",
        "reward_model_adapters",
        "reward_model_quantization_bit",
        "reward_model_type",
        "ld_alpha",
        "use_galore",
        "galore_target",
        "galore_rank",
        "galore_update_interval",
        "galore_scale",
        "galore_proj_type",
        "galore_layerwise",
        "use_apollo",
        "apollo_target",
        "apollo_rank",
        "apollo_update_interval",
        "apollo_scale",
        "apollo_proj",
        "apollo_proj_type",
        "apollo_scale_type",
        "apollo_layerwise",
        "apollo_scale_front",
        "use_badam",
        "badam_mode",
        "badam_start_block",
        "badam_switch_mode",
        "badam_switch_interval",
        "badam_update_ratio",
        "badam_mask_mode",
        "badam_verbose",
        "use_swanlab",
        "swanlab_project",
        "swanlab_workspace",
        "swanlab_run_name",
        "swanlab_mode",
        "swanlab_api_key",
        "swanlab_logdir",
        "swanlab_lark_webhook_url",
        "swanlab_lark_secret",
        "pure_bf16",
        "use_llama_pro",
        "use_adam_mini",
        "use_mca",
        "use_hyper_parallel",
        "hyper_parallel_args",
        "use_muon",
        "use_dft_loss",
        "use_asft_loss",
        "asft_alpha",
        "use_eaft_loss",
        "eaft_alpha",
        "freeze_vision_tower",
        "freeze_multi_modal_projector",
        "freeze_language_model",
        "compute_accuracy",
        "disable_shuffling",
        "early_stopping_steps",
        "plot_loss",
        "include_effective_tokens_per_second",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "num_train_epochs",
        "lr_scheduler_type",
        "warmup_ratio",
        "bf16",
        "fp16",
        "ddp_timeout",
        "logging_steps",
        "save_steps",
        "report_to",
        "use_megatron_bridge",
        "megatron_bridge_args",
        "hyper_parallel_cp_size",
        "_kt_inference_config",
        "_kt_config_handle",
        "_kt_adapter_artifact_path",
    ]
)

_TOKENS = (
    "chatplex loads the tokenizer saved with your fine-tune, which has the tokens LLaMA-Factory added; point "
    "model_name_or_path at that output directory and leave this key out"
)

# key -> (LLaMA-Factory's default, why a value other than the default is refused)
REFUSED: dict[str, tuple[Any, str]] = {
    "add_tokens": (None, _TOKENS),
    "add_special_tokens": (None, _TOKENS),
    "new_special_tokens_config": (None, _TOKENS),
    "split_special_tokens": (False, "chatplex never splits special tokens in prompts (LLaMA-Factory's default)"),
    "train_from_scratch": (False, "a randomly initialised model is for training; chatplex serves trained weights"),
    "adapter_folder": (None, "name the adapters in adapter_name_or_path (comma-separated) or lora_modules"),
    "image_do_pan_and_scan": (False, "Gemma 3's pan-and-scan crops are not implemented; leave it off"),
    "crop_to_patches": (False, "InternVL's crop-to-patches is not implemented; leave it off"),
    "kt_expert_checkpoint_path": (None, "LoRA experts for KTransformers are a training feature of LLaMA-Factory"),
    "kt_use_lora_experts": (False, "LoRA experts for KTransformers are a training feature of LLaMA-Factory"),
    "kt_lora_expert_num": (None, "LoRA experts for KTransformers are a training feature of LLaMA-Factory"),
    "kt_lora_expert_intermediate_size": (
        None,
        "LoRA experts for KTransformers are a training feature of LLaMA-Factory",
    ),
}

# LLaMA-Factory's media keys -> the `media:` policy field with the same meaning.
MEDIA_KEYS = {
    "image_max_pixels": "image_max_pixels",
    "image_min_pixels": "image_min_pixels",
    "video_max_pixels": "video_max_pixels",
    "video_min_pixels": "video_min_pixels",
    "video_fps": "video_fps",
    "video_maxlen": "max_video_frames",
    "audio_sampling_rate": "audio_sampling_rate",
    "use_audio_in_video": "use_audio_in_video",
}

# What LLaMA-Factory's plugins do with media when those keys are not given (its ProcessorArguments' defaults and its
# frame sampling): the `media:` policy under one of its template names, so a model fine-tuned there sees images,
# frames and audio sized and picked as in training. Keys the user gives still win.
MEDIA_DEFAULTS = {
    "image_max_pixels": 768 * 768,
    "image_min_pixels": 32 * 32,
    "video_max_pixels": 256 * 256,
    "video_min_pixels": 16 * 16,
    "video_fps": 2.0,
    "max_video_frames": 128,
    "audio_sampling_rate": 16000,
    "video_pipeline": "llamafactory",
}

# KTransformers: LLaMA-Factory's keys (0.9.5's and the older examples') -> sglang-kt's options in sglang_config.
KT_KEYS = {
    "kt_weight_path": "kt_weight_path",
    "cpu_infer": "kt_cpuinfer",
    "chunk_size": "chunked_prefill_size",
    "kt_optimize_rule": "kt_optimize_rule",
    "kt_non_expert_weight_path": "kt_non_expert_weight_path",
    "kt_cpu_activation": "kt_cpu_activation",
    "kt_config": "kt_config",
}


def translate(key: str, value: Any, into: dict[str, Any]) -> bool:
    """Put a LLaMA-Factory key that chatplex reads under another name into `into` (the flat argument dict) and
    return True; refuse a key whose value chatplex cannot honour; warn about training-only keys. False: not a
    LLaMA-Factory key at all."""
    if isinstance(value, str):
        value = yaml.safe_load(value)  # from the command line: "false" -> False, "4" -> 4
    if key in TRAINING_ONLY:
        logger.warning(
            "Argument %r changes LLaMA-Factory's training, export or logging, not inference; chatplex ignores it.", key
        )
        return True
    if key in REFUSED:
        default, why = REFUSED[key]
        if value != default and value is not None:
            raise ConfigError(f"{key}: {value!r} is not supported: {why}.", param=key)
        return True
    if key in MEDIA_KEYS:
        _nest(into, "media", MEDIA_KEYS[key], value)
        return True
    if key == "use_kt":
        if value is True:
            if into.get("infer_backend", "ktransformers") != "ktransformers":
                raise ConfigError(
                    "use_kt: true runs on the KTransformers backend; set infer_backend: ktransformers "
                    f"(not {into['infer_backend']!r}).",
                    param="use_kt",
                )
            into["infer_backend"] = "ktransformers"
        return True
    if key in KT_KEYS:
        _nest(into, "sglang_config", KT_KEYS[key], value)
        return True
    return False


def _nest(into: dict[str, Any], section: str, key: str, value: Any) -> None:
    """`into[section][key] = value`, unless the section given in the arguments already sets that key."""
    nested = dict(into.get(section) or {})
    nested.setdefault(key, value)
    into[section] = nested
