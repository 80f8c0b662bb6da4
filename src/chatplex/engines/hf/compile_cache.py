"""torch.compile's caches in chatplex's cache folder, so a start reuses what an earlier start compiled.

The decode step is compiled at every start (cuda_graphs.py; cpu_decode.py with `compile: true`). Inductor keeps
compiled graphs and kernels under /tmp/torchinductor_<user> by default, which a reboot, a tmp cleaner or a fresh
container empties, and Triton its kernels under ~/.triton; both are pointed into one folder here
(`CHATPLEX_CACHE_DIR`, else $XDG_CACHE_HOME/chatplex or ~/.cache/chatplex), one mount to keep for a container.
A variable the user set already wins.
"""

from __future__ import annotations

import os


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
