"""torch.compile's caches in chatplex's cache folder, so a start reuses what an earlier start compiled; and how the
engine's steps are compiled (`compile_step`).

The decode step is compiled at every start (cuda_graphs.py; cpu_decode.py and cpu_prefill.py with `compile:
true`). Inductor keeps compiled graphs and kernels under /tmp/torchinductor_<user> by default, which a reboot, a tmp
cleaner or a fresh container empties, and Triton its kernels under ~/.triton; both are pointed into one folder here
(`CHATPLEX_CACHE_DIR`, else $XDG_CACHE_HOME/chatplex or ~/.cache/chatplex), one mount to keep for a container.
A variable the user set already wins.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def cache_root() -> str:
    explicit = os.environ.get("CHATPLEX_CACHE_DIR")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "chatplex")


def use_persistent_compile_cache() -> str:
    """Point Inductor's and Triton's caches into chatplex's folder (before the first compile); returns it."""
    root = os.path.join(cache_root(), "torch_compile")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(root, "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(root, "triton"))
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True  # compiled graphs, keyed by graph and inputs
    functorch_config.enable_autograd_cache = True  # the AOT step before them
    return root


def compile_step(
    forward: Callable[..., Any], fixed_model: bool, inductor_options: dict[str, Any] | None = None
) -> Callable[..., Any]:
    """`forward` through torch.compile, with the persistent caches. `fixed_model`: nothing changes the model's
    modules once compiled, so the guards Dynamo checks on every call for each of their attributes can go (~0.9 ->
    0.15 ms a call for SmolLM2 on the 2-core CPU, 8% of its decode step); a step replayed from a CUDA graph never
    reaches them. `inductor_options`: Inductor settings in force around every call."""
    import torch

    use_persistent_compile_cache()
    skip_module_guards = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    compiled = torch.compile(forward, options=skip_module_guards if fixed_model else None)  # type: ignore[arg-type]
    if not inductor_options:
        return compiled

    # Inductor reads these when it compiles: passed as torch.compile's `options` instead, freezing was not applied
    # (measured on a CPU: the matmuls left unpacked). So they are in force around every call, a recompile's too (a
    # guard that fails on the engine thread, say); the patch is process-wide while it lasts, which no other compile
    # in the process should overlap.
    def with_options(*args: Any) -> Any:
        with torch._inductor.config.patch(inductor_options):
            return compiled(*args)

    return with_options
