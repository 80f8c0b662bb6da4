"""Decode attention on an AVX-512 CPU as a small C++ kernel (`csrc/cpu_decode_attention.cpp`), built for this
machine when a CPU engine with a bfloat16 model and cache starts, and kept in chatplex's cache folder.

Why: at 8 streams of ~200 tokens (issue 16's load, SmolLM2 on the 2-core CPU) the compiled decode step spent ~6 of
its ~17 ms in attention, written for Inductor to trace (paged_decode.traced_decode_attention): its C++ loops convert
every key to float32 and sum each score across a vector, ~100 us a layer for 8 x 256 positions, 5x what reading
the cache costs. The kernel multiplies bfloat16 pairs in hardware (AVX512_BF16's dot product, exact products
summed in float32, as the traced float32 arithmetic), sums 16 scores' vectors with one transpose-and-add, and keeps
each query head's output in registers: ~36 us a layer there (and 6 vs 26 us for one stream of 150), the same
results within the output's bfloat16 rounding (tests/engines/hf/test_cpu_decode_kernel.py). Eager steps gain more: their
gathered attention (paged_decode._gathered_attention) is ~15 torch ops a layer, ~0.2 ms at that load.

Why built here and not shipped: it needs this CPU's instructions (`-march=native`) and the installed torch's
headers and ABI, with the C++ compiler Inductor uses too (`CXX`, else g++; g++, for the OpenMP runtime torch
loads): a build takes ~6 s at the first start, then every start loads it from the cache (keyed by the source,
torch's version, the compiler, the flags and the CPU). `CHATPLEX_CPU_DECODE_KERNEL=0` keeps it from loading. Without
AVX512_BF16 (`/proc/cpuinfo`) or a compiler, with a float32 model or an FP8 cache, other head sizes, or if the
build fails (a warning at start), decode attention runs as before: torch ops eagerly, traced in compiled steps.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from chatplex.engines.hf.compile_cache import cache_root

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "cpu_decode_attention.cpp"
HEAD_DIMS = (64, 96, 128, 256)  # the head sizes the source instantiates
POSITIONS = 16  # positions scored together: block sizes must be a multiple
SWITCH = "CHATPLEX_CPU_DECODE_KERNEL"  # "0": never load it (an A/B, a suspected kernel bug)
BUILD_TIMEOUT_S = 300

_loaded = False
_lock = threading.Lock()  # engines may start on several threads of one process


@functools.cache
def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_supports() -> bool:
    """Whether this CPU has AVX-512 with bfloat16 dot products (Linux: /proc/cpuinfo)."""
    flags = (_cpuinfo() or "").split()
    return "avx512f" in flags and "avx512_bf16" in flags and "avx512bw" in flags


def _flags() -> list[str]:
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        "-O3",
        "-march=native",
        "-std=c++20",
        "-shared",
        "-fPIC",
        "-fopenmp",  # g++'s: at::parallel_for's OpenMP, the libgomp torch has loaded already (clang's is libomp)
        "-w",
        "-DCPU_CAPABILITY_AVX512",
        "-DCPU_CAPABILITY=AVX512",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *(f"-I{p}" for p in cpp_extension.include_paths()),
    ]


def _machine() -> str:
    """What `-march=native` resolves to: the CPU's model and flags, so a cache folder shared between machines (an
    NFS home, an image) never hands one CPU's build to another, where an unknown instruction would kill the step."""
    lines = (_cpuinfo() or "").splitlines()
    return "\n".join(dict.fromkeys(line for line in lines if line.startswith(("model name", "flags"))))


def _library(compiler: list[str]) -> Path:
    """The built kernel for this source, torch, compiler, flags and CPU: from the cache, else compiled into it."""
    flags = _flags()
    version = subprocess.run([*compiler, "--version"], check=True, capture_output=True, text=True, timeout=30).stdout
    identity = [SOURCE.read_text(), torch.__version__, *compiler, version, _machine(), *flags]
    key = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:16]
    folder = Path(cache_root()) / "cpu_kernels"
    target = folder / f"cpu_decode_attention-{key}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    from torch.utils import cpp_extension

    libs = [f"-L{p}" for p in cpp_extension.library_paths()] + ["-lc10", "-ltorch", "-ltorch_cpu"]
    # Built beside the target and renamed onto it, so a start that races this one loads a whole file.
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        built = Path(tmp) / target.name
        command = [*compiler, *flags, str(SOURCE), "-o", str(built), *libs]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        os.replace(built, target)
    return target


def load() -> bool:
    """Build (once per machine) and load the kernel; whether it is ready. Why not is logged: at info where it is
    switched off or this machine cannot have it (no AVX512_BF16, no compiler), as a warning where a build failed."""
    global _loaded
    with _lock:
        if _loaded:
            return True
        if os.environ.get(SWITCH) == "0":
            logger.info("Decode attention runs as torch ops: %s=0", SWITCH)
            return False
        if not cpu_supports():
            why = "this CPU has no AVX512_BF16" if _cpuinfo() is not None else "no /proc/cpuinfo to tell AVX512_BF16"
            logger.info("Decode attention runs as torch ops: %s for chatplex's kernel", why)
            return False
        if not SOURCE.exists():
            logger.warning("Decode attention runs as torch ops: %s is missing from the install", SOURCE)
            return False
        compiler = shlex.split(os.environ.get("CXX") or "g++")
        try:
            torch.ops.load_library(str(_library(compiler)))
        except FileNotFoundError:
            logger.info("Decode attention runs as torch ops: no C++ compiler (%s) for chatplex's kernel", compiler[0])
            return False
        except (subprocess.SubprocessError, OSError, RuntimeError, ImportError) as e:
            why = (getattr(e, "stderr", None) or str(e)).strip()[-300:]
            logger.warning("Decode attention runs as torch ops: chatplex's CPU kernel did not build or load (%s)", why)
            return False
        torch.library.register_fake("chatplex::cpu_decode_attention")(_fake)
        _loaded = True
        return True


def _fake(q, k_cache, v_cache, block_tables, seq_lens, scale, block_size, window):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def fits(q: torch.Tensor, k_cache: torch.Tensor, block_size: int) -> bool:
    """Whether the loaded kernel runs this decode attention (bfloat16 query and cache on the CPU, a head size it
    was built for, blocks of whole 16-position groups)."""
    return (
        _loaded
        and q.device.type == "cpu"
        and q.dtype == k_cache.dtype == torch.bfloat16
        and q.shape[-1] in HEAD_DIMS
        and block_size % POSITIONS == 0
    )


def decode_attention(
    q: torch.Tensor,  # [B, heads, head_dim]
    k_cache: torch.Tensor,  # [slots, kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, width] int32
    seq_lens: torch.Tensor,  # [B] int32
    scale: float,
    block_size: int,
    window: int = 0,  # attend to the last `window` positions only (0: all)
) -> torch.Tensor:
    """[B, heads, head_dim]: each query attended over its sequence's context, for a `fits` case."""
    op = torch.ops.chatplex.cpu_decode_attention
    return op(q, k_cache, v_cache, block_tables, seq_lens, scale, block_size, window)


def calls() -> int:
    """How many times the kernel has run in this process (0 when it is not loaded)."""
    return int(torch.ops.chatplex.cpu_decode_attention_calls()) if _loaded else 0
