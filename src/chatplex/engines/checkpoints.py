"""Checks on what a user points an engine at, shared by the engines that load weights themselves."""

from __future__ import annotations

import os
from typing import Any

from chatplex.errors import ConfigError


def check_adapter_dir(path: str, param: str) -> str:
    """`path` (with ~ expanded) if it is a LoRA adapter directory, else a ConfigError naming `param`."""
    path = os.path.expanduser(path)
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise ConfigError(f"{param}: {path!r} is not a LoRA adapter directory (no adapter_config.json).", param=param)
    return path


def check_one_label(config: Any) -> None:
    """A sequence classifier scores as a reward model only with a single label."""
    num_labels = getattr(config, "num_labels", None)
    if num_labels != 1:
        raise ConfigError(
            f"model_name_or_path: a sequence classifier scores only with one label; this one has {num_labels}.",
            param="model_name_or_path",
        )
