"""LoRA adapters: loaded with peft, applied per token so requests for different adapters share one step.

peft's own mixed-batch path (`adapter_names=`) splits a batch by rows, but the runner's batch is a single row
holding every sequence's tokens. So peft only loads and holds the weights here: its LoRA layers stay disabled
(they compute the base output), and a forward hook on each adds `scale * B(A(x))` to exactly the tokens whose
sequence asked for that adapter. Each token then sees what a single-adapter run would give it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

import torch

from chatplex.engines.checkpoints import check_adapter_dir
from chatplex.engines.hf import packed_linear
from chatplex.engines.hf.cpu_decode import CompiledCpuDecode
from chatplex.errors import ConfigError, InvalidRequestError, NotFoundError, UnsupportedFeatureError

logger = logging.getLogger(__name__)


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:
        raise ConfigError("LoRA adapters need peft: pip install 'chatplex[lora]'.", param="adapter_name_or_path") from e
    return peft


def merge_adapters(model: Any, paths: list[str]) -> Any:
    """Merge adapters into the weights one after another (LLaMA-Factory's inference behaviour); the plain model."""
    peft = _peft()
    for path in paths:
        path = check_adapter_dir(path, "adapter_name_or_path")
        model = peft.PeftModel.from_pretrained(model, path).merge_and_unload()
    return model


class LoraAdapters:
    """Named adapters resident on one model, and the token groups of the step being run."""

    def __init__(self, model: Any, max_loras: int) -> None:
        self.model = model
        self.max_loras = max_loras
        self._peft_model: Any = None
        self._hooked: set[int] = set()
        self._groups: dict[str, torch.Tensor] = {}
        self.paths: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def load(self, name: str, path: str, param: str = "lora_path") -> None:
        """Load an adapter under `name` (not while a step runs: the engine calls this between steps)."""
        if name in self.paths:
            raise InvalidRequestError(f"lora_name: the adapter {name!r} is already loaded.", param="lora_name")
        if len(self.paths) >= self.max_loras:
            raise InvalidRequestError(
                f"lora_name: {len(self.paths)} adapters are loaded, the limit (max_loras); unload one first.",
                param="lora_name",
            )
        path = check_adapter_dir(path, param)
        peft = _peft()
        try:
            if self._peft_model is None:
                self._peft_model = peft.PeftModel.from_pretrained(self.model, path, adapter_name=name)
            else:
                self._peft_model.load_adapter(path, adapter_name=name)
        except (ValueError, RuntimeError, KeyError) as e:
            raise ConfigError(f"{param}: cannot load the adapter at {path!r} onto this model: {e}", param=param) from e
        try:
            self._hook_layers(peft)
        except ConfigError:
            self._peft_model.base_model.delete_adapter(name)  # leave the model as it was before this load
            raise
        self.paths[name] = path

    def unload(self, name: str) -> None:
        if name not in self.paths:
            raise NotFoundError(f"The LoRA adapter {name!r} is not loaded.", param="lora_name", code="model_not_found")
        self._peft_model.base_model.delete_adapter(name)
        del self.paths[name]

    def _hook_layers(self, peft: Any) -> None:
        from peft.tuners.lora.layer import LoraLayer

        head = self.model.get_output_embeddings()
        for module_name, module in self.model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            if module is head:
                # The runner computes logits for each sequence's last token only, not for every token of the step.
                raise ConfigError(
                    f"lora_modules: the adapter targets {module_name}, the output layer; per-request adapters support "
                    "the decoder's layers. Merge it instead (adapter_name_or_path).",
                    param="lora_modules",
                )
            if not _plain_linear_lora(module) or any(module.use_dora.values()) or any(module.lora_bias.values()):
                raise ConfigError(
                    f"lora_modules: {module_name} is a {type(module).__name__} LoRA layer (or uses DoRA / bias); "
                    "per-request adapters support plain LoRA on linear layers. "
                    "Merge it instead (adapter_name_or_path).",
                    param="lora_modules",
                )
            module.enable_adapters(False)  # the base output only; the hook adds each token's own adapter
            if id(module) not in self._hooked:
                cast(torch.nn.Module, module).register_forward_hook(self._add_lora)  # peft's layers are Modules
                self._hooked.add(id(module))

    def activate(self, groups: dict[str, torch.Tensor]) -> None:
        """Token indices (into the flat batch) per adapter name, for the next forward pass."""
        self._groups = groups

    def deactivate(self) -> None:
        self._groups = {}

    def _add_lora(self, module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if not self._groups:
            return output
        x = args[0]
        for name, index in self._groups.items():
            if name not in module.lora_A:
                continue
            lora_a, lora_b = module.lora_A[name], module.lora_B[name]
            xs = x.index_select(1, index).to(lora_a.weight.dtype)
            delta = lora_b(lora_a(xs)) * module.scaling[name]
            output.index_add_(1, index, delta.to(output.dtype))
        return output


def _plain_linear_lora(module: Any) -> bool:
    """Linear LoRA factors over a linear base layer: peft's Linear (also over GPT-2's Conv1D), or its layers over
    quantized linears (bitsandbytes, GPTQ, AWQ, ...), whose base output the hook adds to the same way."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    return isinstance(module, LoraLinear) or (
        bool(module.lora_A)
        and all(isinstance(m, torch.nn.Linear) for m in [*module.lora_A.values(), *module.lora_B.values()])
        and not getattr(module, "lora_embedding_A", None)
        and hasattr(module.get_base_layer(), "in_features")
    )


# ---- run-time operations (the engine runs these on its thread, between steps) ------------------------------------
def resolve_adapter(name: str | None, loaded: list[str], default: str | None) -> str | None:
    """The adapter a request runs with: the one it names (which must be loaded), else the engine's default."""
    if name is None:
        return default
    if name not in loaded:
        raise NotFoundError(f"The LoRA adapter {name!r} is not loaded.", param="model", code="model_not_found")
    return name


def load_at_run_time(runner: Any, max_loras: int, name: str, path: str) -> None:
    """Load an adapter onto the runner's model (its first one creates the adapter set)."""
    if isinstance(runner.graphs, CompiledCpuDecode):
        # Its steps have the weights baked in and check no module for changes (cpu_decode.py): they would not see
        # peft's wrappers. So steps run eagerly from here on, as they do in an engine started with adapters.
        logger.warning("LoRA adapter %r loads at run time: the compiled CPU steps are dropped", name)
        runner.graphs = runner.prefill = None
    if runner.lora is None:
        packed_linear.unpack_linears(runner.model)  # peft wraps plain nn.Linear layers only
        runner.lora = LoraAdapters(runner.model, max_loras)
    runner.lora.load(name, path)


def unload_at_run_time(runner: Any, name: str, live: Iterable[Any]) -> None:
    """Unload an adapter; refused while a live sequence (of `live`) uses it."""
    users = sum(seq.adapter == name for seq in live if not seq.is_finished)
    if users:
        raise UnsupportedFeatureError(
            f"lora_name: the adapter {name!r} is in use by {users} sequences.", param="lora_name"
        )
    if runner.lora is None:
        raise NotFoundError(f"The LoRA adapter {name!r} is not loaded.", param="lora_name", code="model_not_found")
    runner.lora.unload(name)
