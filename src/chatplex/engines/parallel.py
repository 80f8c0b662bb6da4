"""More than one device or machine, through the engines built for it: vLLM in-process and a launched SGLang server.

chatplex has no parallelism of its own; this module turns its keys into one `Layout` and checks that layout
against the model and the machine before any weights load, with messages that say what to change.

Keys (vLLM's names; LLaMA-Factory's `sglang_tp_size` still sets SGLang's tensor parallel size):
    tensor_parallel_size      -1: one per visible GPU (LLaMA-Factory's default for vLLM), 1 on a CPU
    pipeline_parallel_size    layers split into this many stages
    data_parallel_size        whole replicas of the model behind one engine
    distributed_executor_backend
                              vLLM: mp (processes; one machine, or several with nnodes), ray (a Ray cluster),
                              uni (one process); left out: vLLM's choice
    ray_address               the Ray cluster vLLM's ray executor joins (its engine process reads RAY_ADDRESS)
    nnodes, node_rank, dist_init_addr
                              several machines without Ray: node 0 serves, nodes 1.. run workers only
                              (`chatplex serve CONFIG --node-rank R` on each); dist_init_addr is node 0's
                              host:port for torch.distributed
`vllm_config` / `sglang_config` entries of the same meaning (tensor_parallel_size, tp_size, ...) win, as every
entry there does.

On a CPU, vLLM binds each worker process's threads to its own cores (VLLM_CPU_OMP_THREADS_BIND) and refuses to
start two workers without it on a single NUMA node; `cpu_thread_binding` splits the cores chatplex may use.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatplex.errors import ConfigError

if TYPE_CHECKING:
    from chatplex.config import ChatplexArgs, ModelArguments


PARALLEL_BACKENDS = ("vllm", "sglang", "ktransformers")
EXECUTORS = ("mp", "ray", "uni")
CPU_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
_SIZES = ("pipeline_parallel_size", "data_parallel_size", "nnodes")

# Each engine's own spelling of a Layout field, as its pass-through config may hold it.
_VLLM_NAMES = {
    "tensor": "tensor_parallel_size",
    "pipeline": "pipeline_parallel_size",
    "data": "data_parallel_size",
    "nnodes": "nnodes",
    "node_rank": "node_rank",
    "executor": "distributed_executor_backend",
}
_SGLANG_NAMES = {
    "tensor": "tp_size",
    "pipeline": "pp_size",
    "data": "dp_size",
    "nnodes": "nnodes",
    "node_rank": "node_rank",
    "dist_init_addr": "dist_init_addr",
}


@dataclass(frozen=True)
class Layout:
    """How one model is spread: tensor x pipeline x data workers over `nnodes` machines, this one `node_rank`."""

    tensor: int = 1
    pipeline: int = 1
    data: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None
    executor: str | None = None
    ray_address: str | None = None
    tensor_auto: bool = False  # `tensor` came from tensor_parallel_size -1 (the visible GPUs), not from the user

    @property
    def workers(self) -> int:
        return self.tensor * self.pipeline * self.data

    @property
    def local_workers(self) -> int:
        return max(1, self.workers // self.nnodes)

    @property
    def is_worker_node(self) -> bool:
        return self.node_rank > 0

    @property
    def master(self) -> tuple[str, int]:
        """dist_init_addr as (host, port)."""
        assert self.dist_init_addr is not None
        host, _, port = self.dist_init_addr.rpartition(":")
        return host.strip("[]"), int(port)


def check_keys(margs: ModelArguments) -> None:
    """The parallel keys on their own (config time): positive sizes, a node rank in range, a usable address, and
    an engine that can use them."""
    for name in _SIZES:
        _check_size(name, getattr(margs, name))
    tp = margs.tensor_parallel_size
    if tp != -1:
        _check_size("tensor_parallel_size", tp, "or -1 for one per visible GPU")
    if margs.distributed_executor_backend is not None and margs.distributed_executor_backend not in EXECUTORS:
        raise ConfigError(
            f"distributed_executor_backend: {margs.distributed_executor_backend!r} is not valid; choose one of "
            f"{', '.join(EXECUTORS)}.",
            param="distributed_executor_backend",
        )
    sizes = {"tensor_parallel_size": tp, **{k: getattr(margs, k) for k in _SIZES}}
    wanted = [name for name, value in sizes.items() if value > 1]
    if wanted and margs.infer_backend not in PARALLEL_BACKENDS:
        raise ConfigError(
            f"{wanted[0]}: the {margs.infer_backend} engine runs a model on one device; tensor, pipeline and data "
            "parallelism and several machines come from infer_backend vllm (in-process) or sglang (a launched "
            "server).",
            param=wanted[0],
        )
    _check_nodes(margs.nnodes, margs.node_rank, margs.dist_init_addr)


def vllm_layout(margs: ModelArguments) -> Layout:
    """The layout for the vLLM engine: chatplex's keys, then `vllm_config`'s (master_addr/master_port as one
    address). tensor_parallel_size -1 becomes the visible GPU count (1 on a CPU)."""
    config = dict(margs.vllm_config or {})
    layout = _overlay(_base_layout(margs), config, _VLLM_NAMES)
    if "master_addr" in config or "master_port" in config:
        host, port = layout.master if layout.dist_init_addr else ("127.0.0.1", 29501)
        addr = f"{config.get('master_addr', host)}:{config.get('master_port', port)}"
        layout = dataclasses.replace(layout, dist_init_addr=addr)
    return _resolved(layout)


def sglang_layout(margs: ModelArguments) -> Layout:
    """The layout for a launched SGLang: chatplex's keys (LLaMA-Factory's sglang_tp_size first), then
    `sglang_config`'s."""
    layout = _base_layout(margs)
    if margs.sglang_tp_size != -1:
        layout = dataclasses.replace(layout, tensor=margs.sglang_tp_size)
    return _resolved(_overlay(layout, dict(margs.sglang_config or {}), _SGLANG_NAMES))


def fit_model(layout: Layout, hf_config: Any, model_name: str) -> Layout:
    """The layout checked against the model's shape (check_model), an automatic tensor parallel size first brought
    down to the largest the heads allow: 9 heads on 8 GPUs run on 3, where a size the user gave is refused."""
    heads, kv_heads, _ = _shape(hf_config)
    if layout.tensor_auto and heads and kv_heads:
        fits = [d for d in range(layout.tensor, 0, -1) if not heads % d and (not kv_heads % d or not d % kv_heads)]
        layout = dataclasses.replace(layout, tensor=fits[0])
    check_model(layout, hf_config, model_name)
    return layout


def check_model(layout: Layout, hf_config: Any, model_name: str) -> None:
    """Sizes the model's shape allows: tensor parallel divides the attention heads (and fits the KV heads),
    pipeline parallel has a layer for every stage."""
    heads, kv_heads, layers = _shape(hf_config)
    tp = layout.tensor
    if heads and heads % tp:
        sizes = ", ".join(str(d) for d in _divisors(heads) if d <= max(tp * 2, 8))
        raise ConfigError(
            f"tensor_parallel_size {tp} does not divide {model_name}'s {heads} attention heads: choose one that "
            f"does ({sizes}), or split its layers with pipeline_parallel_size instead.",
            param="tensor_parallel_size",
        )
    if kv_heads and kv_heads % tp and tp % kv_heads:
        raise ConfigError(
            f"tensor_parallel_size {tp} neither divides nor is a multiple of {model_name}'s {kv_heads} key-value "
            f"heads: choose one of {', '.join(str(d) for d in _divisors(kv_heads))} or a multiple of {kv_heads}.",
            param="tensor_parallel_size",
        )
    if layers and layout.pipeline > layers:
        raise ConfigError(
            f"pipeline_parallel_size {layout.pipeline} is more stages than {model_name}'s {layers} layers; "
            f"use at most {layers}.",
            param="pipeline_parallel_size",
        )


def check_devices(layout: Layout, on_cpu: bool) -> None:
    """Enough devices on this machine for its share of the workers (Ray places workers across its cluster)."""
    if layout.executor == "ray":
        if on_cpu:
            raise ConfigError(
                "distributed_executor_backend: vLLM's CPU platform does not run the ray executor (it refuses with "
                "'current platform cpu does not support ray'); use mp, which runs the workers as processes here "
                "and across machines with nnodes.",
                param="distributed_executor_backend",
            )
        if layout.nnodes > 1:
            raise ConfigError(
                "nnodes: the ray executor places workers on the Ray cluster's machines itself; give ray_address "
                "(or start chatplex on a node of the cluster) and leave nnodes at 1.",
                param="nnodes",
            )
        return
    if layout.local_workers == 1:
        return
    if on_cpu:
        cores = len(usable_cores())
        if layout.local_workers > cores:
            raise ConfigError(
                f"{_share(layout)} CPU worker processes need a core each, and this machine lets chatplex use "
                f"{cores}: lower the sizes or spread them over machines with nnodes.",
                param="tensor_parallel_size",
            )
        return
    gpus = visible_gpus()
    if layout.local_workers > gpus:
        raise ConfigError(
            f"{_share(layout)} workers need a GPU each, and this machine shows {gpus} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): lower the sizes, spread them "
            "over machines with nnodes, or join a Ray cluster (distributed_executor_backend: ray).",
            param="tensor_parallel_size",
        )


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cpu_thread_binding(workers: int, cores: list[int] | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `workers` CPU worker processes: the usable cores in `workers` contiguous
    groups ("0-3|4-7"), one left over for the frontend (tokenizing, HTTP) when there are cores to spare."""
    cores = usable_cores() if cores is None else cores
    if len(cores) > workers:
        cores = cores[: len(cores) - 1]
    per, extra = divmod(len(cores), workers)
    bounds = [i * per + min(i, extra) for i in range(workers + 1)]
    groups = [cores[bounds[i] : bounds[i + 1]] for i in range(workers)]
    return "|".join(",".join(_ranges(group)) for group in groups)


def visible_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_worker_node(args: ChatplexArgs) -> int:
    """Run this machine's workers of a model that node 0 serves (node_rank >= 1); returns when they stop."""
    backend = args.model.infer_backend
    if backend == "vllm":
        from chatplex.engines.vllm.distributed import run_workers

        return run_workers(args)
    if backend in ("sglang", "ktransformers"):
        from chatplex.engines.launcher import run_sglang_worker_node

        return run_sglang_worker_node(args)
    raise ConfigError(f"node_rank: the {backend} engine runs on one machine.", param="node_rank")


def worker_node_error(layout: Layout) -> ConfigError:
    """What a frontend started on a worker node is told."""
    return ConfigError(
        f"node_rank {layout.node_rank}: node 0 serves requests, this node runs workers only. Start it with "
        f"`chatplex serve CONFIG --node-rank {layout.node_rank}` (same config as node 0), and send requests to "
        "node 0.",
        param="node_rank",
    )


def is_worker_node(args: ChatplexArgs) -> bool:
    backend = args.model.infer_backend
    if backend == "vllm":
        return vllm_layout(args.model).is_worker_node
    if backend in ("sglang", "ktransformers"):
        return sglang_layout(args.model).is_worker_node
    return False


# ---- helpers ------------------------------------------------------------------------------------------------
def _base_layout(margs: ModelArguments) -> Layout:
    return Layout(
        tensor=margs.tensor_parallel_size,
        pipeline=margs.pipeline_parallel_size,
        data=margs.data_parallel_size,
        nnodes=margs.nnodes,
        node_rank=margs.node_rank,
        dist_init_addr=margs.dist_init_addr,
        executor=margs.distributed_executor_backend,
        ray_address=margs.ray_address,
    )


def _overlay(layout: Layout, config: dict[str, Any], names: dict[str, str]) -> Layout:
    return dataclasses.replace(layout, **{field: config[key] for field, key in names.items() if key in config})


def _resolved(layout: Layout) -> Layout:
    if layout.tensor == -1:
        layout = dataclasses.replace(layout, tensor=visible_gpus() or 1, tensor_auto=True)
    _check_nodes(layout.nnodes, layout.node_rank, layout.dist_init_addr)
    if layout.workers % layout.nnodes:
        raise ConfigError(
            f"nnodes {layout.nnodes} does not divide the {layout.workers} workers (tensor {layout.tensor} x "
            f"pipeline {layout.pipeline} x data {layout.data}); every machine runs the same number.",
            param="nnodes",
        )
    return layout


def _check_nodes(nnodes: int, node_rank: int, dist_init_addr: str | None) -> None:
    if not isinstance(node_rank, int) or isinstance(node_rank, bool) or not 0 <= node_rank < max(nnodes, 1):
        raise ConfigError(
            f"node_rank must be in 0..{max(nnodes, 1) - 1} (nnodes is {nnodes}), got {node_rank!r}.",
            param="node_rank",
        )
    if nnodes > 1:
        host, sep, port = (dist_init_addr or "").rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"dist_init_addr: {nnodes} machines need node 0's address as host:port (e.g. 10.0.0.1:29501), the "
                f"same on every node; got {dist_init_addr!r}.",
                param="dist_init_addr",
            )


def _check_size(name: str, value: Any, other: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"{name} must be a positive integer{' ' + other if other else ''}, got {value!r}.", param=name
        )


def _share(layout: Layout) -> str:
    where = f" / {layout.nnodes} machines" if layout.nnodes > 1 else ""
    return f"tensor {layout.tensor} x pipeline {layout.pipeline} x data {layout.data}{where} = {layout.local_workers}"


def _shape(hf_config: Any) -> tuple[int | None, int | None, int | None]:
    """(attention heads, key-value heads, layers) of a model's (text) config."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    heads = getattr(text, "num_attention_heads", None)
    return heads, getattr(text, "num_key_value_heads", None) or heads, getattr(text, "num_hidden_layers", None)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _ranges(cores: list[int]) -> list[str]:
    """[0, 1, 2, 5] -> ["0-2", "5"]."""
    out: list[str] = []
    start = prev = cores[0]
    for core in [*cores[1:], None]:
        if core is not None and core == prev + 1:
            prev = core
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if core is not None:
            start = prev = core
    return out
