"""Reward models: find the scoring head a model comes with and turn inputs into token ids to score.

Two formats are in use:
  * a `*ForSequenceClassification` model with one label (the hub convention, e.g. Skywork-Reward): its own
    linear `score` head on the decoder's last hidden state;
  * LLaMA-Factory's: a causal LM (plus LoRA adapters) and `value_head.safetensors` / `value_head.bin` holding
    `v_head.summary.weight` [1, H] and `v_head.summary.bias` [1], in the last adapter directory or the model's.
Either way the runner runs the decoder alone and applies the head at each sequence's last token, so a score
never depends on padding (the flat batch has none).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from chatplex.engines.checkpoints import check_one_label
from chatplex.errors import ConfigError, InvalidRequestError
from chatplex.templates import render_prompt

VALUE_HEAD_FILES = ("value_head.safetensors", "value_head.bin")
WEIGHT_KEY, BIAS_KEY = "v_head.summary.weight", "v_head.summary.bias"


@dataclass
class ScoreFormat:
    kind: str  # "sequence_classification" or "value_head"
    value_head_path: str | None = None


def _architectures(model_dir: str) -> list[str]:
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            return list(json.load(f).get("architectures") or [])
    except (OSError, ValueError):
        return []


def find_value_head(dirs: list[str]) -> str | None:
    """The value head file in the first of `dirs` that has one (callers pass the last adapter dir first)."""
    for folder in dirs:
        for name in VALUE_HEAD_FILES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def is_sequence_classifier(model_dir: str) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in _architectures(model_dir))


def detect(model_dir: str, adapter_dirs: list[str], task: str) -> ScoreFormat | None:
    """The model's scoring format, or None for a generative model.

    `task`: "score" demands a head (ConfigError naming both formats when there is none); "auto" scores only a
    sequence classifier, since a causal LM with a value head (a PPO policy, say) is usually served to generate.
    """
    if task == "generate":
        return None
    if is_sequence_classifier(model_dir):
        return ScoreFormat("sequence_classification")
    if task == "auto":
        return None
    head = find_value_head([*reversed(adapter_dirs), model_dir])
    if head is None:
        searched = ", ".join([*reversed(adapter_dirs), model_dir])
        raise ConfigError(
            f"task: score needs a reward model, but {model_dir!r} is neither a *ForSequenceClassification model "
            f"nor comes with {' or '.join(VALUE_HEAD_FILES)} (looked in: {searched}).",
            param="task",
        )
    return ScoreFormat("value_head", head)


def load_value_head(path: str, hidden_size: int, dtype: torch.dtype, device: torch.device) -> torch.nn.Linear:
    """LLaMA-Factory's value head as a plain Linear(H, 1)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in (WEIGHT_KEY, BIAS_KEY) if k not in state]
    if missing:
        raise ConfigError(f"{path}: the value head lacks {', '.join(missing)}.", param="model_name_or_path")
    weight, bias = state[WEIGHT_KEY], state[BIAS_KEY]
    if tuple(weight.shape) != (1, hidden_size) or tuple(bias.shape) != (1,):
        raise ConfigError(
            f"{path}: value head weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not fit hidden size "
            f"{hidden_size} (expected (1, {hidden_size}) and (1,)).",
            param="model_name_or_path",
        )
    head = torch.nn.Linear(hidden_size, 1, dtype=dtype, device=device)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.eval()


def classifier_head(model: Any) -> torch.nn.Module:
    """The single-label head of a `*ForSequenceClassification` model."""
    check_one_label(model.config)
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
    raise ConfigError(
        "model_name_or_path: cannot find the classifier's linear head (score).", param="model_name_or_path"
    )


def decoder_of(model: Any) -> torch.nn.Module:
    """The transformer body (its output is the final-normed hidden state) of a causal LM or classifier."""
    return getattr(model, model.base_model_prefix)


def input_ids(prompts: Any, inp: Any, index: int, max_length: int | None, truncation_side: str = "right") -> list[int]:
    """Token ids to score for one input: a string as it is, a conversation rendered with the model's template.

    `prompts` is the engine's PromptPreparer. Long inputs are cut to `max_length` (then to the model's context):
    truncation_side "right" keeps their beginning, as LLaMA-Factory's truncation does; "left" keeps their end,
    as vLLM's truncate_prompt_tokens does.
    """
    if isinstance(inp, str):
        ids = prompts.tokenizer.encode(inp, add_special_tokens=False)
    elif isinstance(inp, list) and all(isinstance(m, dict) for m in inp) and inp:
        from chatplex.messages import normalize_messages

        messages = normalize_messages(inp, require_reply=False)
        text = render_prompt(prompts.tokenizer, prompts.template, messages, add_generation_prompt=False)
        ids = prompts.tokenizer.encode(text, add_special_tokens=False)
    else:
        raise InvalidRequestError(
            f"batch_input[{index}]: must be a string or a non-empty list of chat messages.", param="batch_input"
        )
    if not ids:
        raise InvalidRequestError(f"batch_input[{index}]: the input is empty.", param="batch_input")
    limit = min(max_length or prompts.max_model_len, prompts.max_model_len)
    return ids[:limit] if truncation_side == "right" else ids[-limit:]


def check_max_length(max_length: Any) -> None:
    if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0):
        raise InvalidRequestError(f"max_length: must be a positive integer, got {max_length!r}.", param="max_length")


def batch_input_ids(prompts: Any, inputs: list[Any], max_length: Any, truncation_side: str) -> list[list[int]]:
    """Token ids of each input of a scoring request (checked, cut to max_length)."""
    check_max_length(max_length)
    return [input_ids(prompts, x, i, max_length, truncation_side) for i, x in enumerate(inputs)]
