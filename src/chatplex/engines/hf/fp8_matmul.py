"""FP8 linear layers on a GPU as one Triton kernel: block-scaled float8 weights times activations quantized on the fly.

Why our own: transformers 5 runs its FP8Linear layers (checkpoints with `quant_method: fp8`, as DeepSeek, Qwen and
transformers' FineGrainedFP8Config save them) through a kernel that its `kernels` package downloads from the
Hugging Face Hub at the first step, so a machine without the Hub (a cluster node, an air-gapped server) could only
run such a model dequantized to bf16: twice the weight memory and none of FP8's speed. This kernel ships with
chatplex, needs nothing but Triton, and is a registered op, so CUDA graphs capture it and torch.compile keeps it
whole.

The arithmetic is the checkpoint's (`activation_scheme: dynamic`, W8A8): each row of the input is cut into groups
of the weight's block width along K (at most 128; 128 for a per-tensor scale) and each group is scaled into float8
e4m3 by its own absolute maximum
(amax / 448), then the float8 tensor cores multiply it with the float8 weight tile and the partial sum is scaled
by the activation group's and the weight block's scale. Activations are quantized inside the matmul, per tile, not
by a separate kernel: at decode sizes a second launch and its round trip through memory cost more than the few
re-quantizations of the same rows. Float8 tensor cores need compute capability 8.9 (Ada, Hopper and later).

Decode launches (16 rows or fewer) also cut K into slices: an 8B model's 4096-wide layers have too few column tiles
to keep every SM reading the weight, and reading it is all a decode step's matmul does. The slices' partial sums
meet in the one that finishes last, inside the same launch (an arrival counter per tile), so a decode matmul stays
one kernel: a separate reduction would add a launch per layer, ~2 us each inside a CUDA graph, 224 per step.
"""

from __future__ import annotations

from typing import Any

import torch

from chatplex.engines.hf.triton_decode import sm_count

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs have no Triton; FP8 checkpoints load dequantized there
    triton = None

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8 e4m3fn
_MIN_AMAX = 1e-10  # an all-zero group (padding rows) gets a tiny scale, not a division by zero


if triton is not None:

    @triton.jit
    def _fp8_block_matmul_kernel(
        a_ptr,
        w_ptr,
        s_ptr,
        c_ptr,
        partial_ptr,
        arrived_ptr,
        M,
        N,
        K,
        stride_am,
        stride_wn,
        stride_sn,
        stride_sk,
        stride_cm,
        GROUP_N: tl.constexpr,
        GROUP_K: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_k = tl.program_id(2)
        k_blocks = tl.cdiv(K, BLOCK_K)
        k_per_split = tl.cdiv(k_blocks, SPLIT_K)
        k_first = pid_k * k_per_split
        k_end = tl.minimum(k_first + k_per_split, k_blocks)
        offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # M x K can pass 2**31 in a long prefill
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] + k_first * BLOCK_K
        w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] + k_first * BLOCK_K
        s_ptrs = s_ptr + (offs_n // GROUP_N) * stride_sn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(k_first, k_end):
            k_ok = offs_k < K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=mask_m[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            a_scale = tl.maximum(tl.max(tl.abs(a), axis=1), 1e-10) / 448.0  # _MIN_AMAX, FP8_MAX
            a_q = (a / a_scale[:, None]).to(tl.float8e4nv)
            w = tl.load(w_ptrs, mask=mask_n[None, :] & k_ok[:, None], other=0.0)
            w_scale = tl.load(s_ptrs + ((kb * BLOCK_K) // GROUP_K) * stride_sk, mask=mask_n, other=0.0)
            acc += tl.dot(a_q, w) * a_scale[:, None] * w_scale[None, :]
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
        mask_c = mask_m[:, None] & mask_n[None, :]
        if SPLIT_K == 1:
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_c)
        else:
            # Each slice of K leaves its partial sum; the slice that arrives last for this tile adds them up in
            # slice order (the same result whichever finishes first) and resets the tile's counter for the next
            # launch, so no memset runs between launches.
            tile = pid_m * tl.num_programs(0) + pid_n
            p_ptrs = partial_ptr + offs_m[:, None] * N + offs_n[None, :]
            tl.store(p_ptrs + pid_k * M * N, acc, mask=mask_c)  # int32 offsets: slices are for 16 rows or fewer
            tl.debug_barrier()  # every thread's partial is written before the counter says so
            if tl.atomic_add(arrived_ptr + tile, 1) == SPLIT_K - 1:  # acq_rel: the others' partials are visible
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for s in range(SPLIT_K):
                    total += tl.load(p_ptrs + s * M * N, mask=mask_c, other=0.0, cache_modifier=".cg")
                tl.store(c_ptrs, total.to(c_ptr.dtype.element_ty), mask=mask_c)
                tl.atomic_xchg(arrived_ptr + tile, 0)


# Counters of the K slices finished per output tile, zero between launches (the last slice resets its own): one
# buffer per GPU, made outside CUDA-graph capture (by install) so captured launches keep its address. Launches share
# it, which holds because the engine runs its layers on one stream, one after another: two sliced launches in flight
# at once could push a tile's count past its last slice, and that tile would never be written again.
_ARRIVED: dict[torch.device, torch.Tensor] = {}
_MAX_TILES = 1 << 16
SPLIT_TARGET = 4  # programs per SM a decode launch aims at


def _arrived(device: torch.device) -> torch.Tensor | None:
    """The device's counters, made at the first call outside a capture; None inside one that came first (a kernel
    captured alone, never the engine's: install() makes them), which then runs K in one pass."""
    if device not in _ARRIVED and not torch.cuda.is_current_stream_capturing():
        _ARRIVED[device] = torch.zeros(_MAX_TILES, dtype=torch.int32, device=device)
    return _ARRIVED.get(device)


def launch_config(m: int, n: int, k: int, device: torch.device) -> dict[str, int]:
    """Tile sizes by the number of rows: decode steps (a few rows) are bound by reading the weight, so narrow
    column tiles, and K cut into slices where the column tiles alone are too few to keep every SM reading (the
    slices' partial sums meet in the last one to finish); prefill (many rows) is bound by the tensor cores, so
    wide tiles reuse the weight."""
    if m <= 16:  # measured on an H100 (benchmarks/fp8_matmul.py): 1.0-1.5x bf16 on Llama-8B's layers
        tiles = {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
        column_tiles, k_blocks = -(-n // tiles["BLOCK_N"]), -(-k // 128)  # K blocks of at most 128 (fp8_matmul)
        split = 1
        while column_tiles * split * 2 <= SPLIT_TARGET * sm_count(device) and split * 2 <= k_blocks // 2:
            split *= 2
        return {**tiles, "SPLIT_K": split}
    if m <= 64:
        return {"BLOCK_M": 64 if m > 32 else 32, "BLOCK_N": 64, "num_warps": 4, "num_stages": 4, "SPLIT_K": 1}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3, "SPLIT_K": 1}


def fp8_matmul(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None, **config: int
) -> torch.Tensor:
    """x (..., K) in bf16/fp16 times float8 `weight` (N, K) with float32 `scale` per (block_n, block_k) block
    (`block` None: one scale for the whole weight); returns (..., N) in x's dtype."""
    n, k = weight.shape
    assert weight.stride(1) == 1, "the kernel reads weight rows as contiguous K"
    rows = x.reshape(-1, k)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    m = rows.shape[0]
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if block is None:  # per-tensor: every column and K group reads the one scale (strides 0; the groups are moot)
        group_n, group_k, stride_sn, stride_sk = 1, 128, 0, 0
    else:
        (group_n, group_k), (stride_sn, stride_sk) = block, scale.stride()
    tiles = {**launch_config(m, n, k, x.device), **config}
    grid = (triton.cdiv(n, tiles["BLOCK_N"]), triton.cdiv(m, tiles["BLOCK_M"]), tiles["SPLIT_K"])
    arrived = _arrived(x.device) if tiles["SPLIT_K"] > 1 else None
    if arrived is None or grid[0] * grid[1] > _MAX_TILES:
        tiles["SPLIT_K"] = 1
        grid = (*grid[:2], 1)
    partial = out.new_empty((tiles["SPLIT_K"], m, n), dtype=torch.float32) if tiles["SPLIT_K"] > 1 else out
    _fp8_block_matmul_kernel[grid](
        rows,
        weight,
        scale,
        out,
        partial,
        arrived if arrived is not None else out,  # unread in one pass (SPLIT_K 1), but Triton wants a pointer
        m,
        n,
        k,
        rows.stride(0),
        weight.stride(0),
        stride_sn,
        stride_sk,
        out.stride(0),
        GROUP_N=group_n,
        GROUP_K=group_k,
        BLOCK_K=min(group_k, 128),
        **tiles,
    )
    return out.reshape(*x.shape[:-1], n)


@torch.library.custom_op("chatplex::fp8_linear", mutates_args=())
def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block_n: int, block_k: int) -> torch.Tensor:
    """The kernel as an op (block_n 0: a per-tensor scale), opaque to torch.compile and captured by CUDA graphs."""
    return fp8_matmul(x, weight, scale, (block_n, block_k) if block_n else None)


@fp8_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block_n: int, block_k: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def dequantized(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """The float32 weight a float8 one with its scales stands for."""
    n, k = weight.shape
    if block is None:
        return weight.float() * scale.float()
    return weight.float() * scale.float().repeat_interleave(block[0], 0)[:n].repeat_interleave(block[1], 1)[:, :k]


def quantize(weight: torch.Tensor, block: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float8 e4m3 with one float32 scale per block (`block` None: one for the whole weight), as FP8 checkpoints
    store it (for tests, the benchmark and the start-up check)."""
    if block is None:
        scale = weight.float().abs().amax().clamp(min=_MIN_AMAX) / FP8_MAX
        return (weight.float() / scale).to(FP8), scale
    n, k = weight.shape
    rows, cols = -(-n // block[0]), -(-k // block[1])
    padded = torch.nn.functional.pad(weight.float(), (0, cols * block[1] - k, 0, rows * block[0] - n))
    tiles = padded.reshape(rows, block[0], cols, block[1])
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=_MIN_AMAX) / FP8_MAX
    q = (tiles / scale[:, None, :, None]).reshape(rows * block[0], cols * block[1])[:n, :k]
    return q.to(FP8), scale


def reference(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None
) -> torch.Tensor:
    """The same arithmetic in plain torch (float32), for tests and for checking the kernel on a new GPU."""
    n, k = weight.shape
    group_k = 128 if block is None else min(block[1], 128)
    rows = x.reshape(-1, k).float()
    pad = -k % group_k
    groups = torch.nn.functional.pad(rows, (0, pad)).unflatten(-1, (-1, group_k))
    a_scale = groups.abs().amax(-1, keepdim=True).clamp(min=_MIN_AMAX) / FP8_MAX
    rows = ((groups / a_scale).to(FP8).float() * a_scale).flatten(-2)[:, :k]
    return (rows @ dequantized(weight, scale, block).T).to(x.dtype).reshape(*x.shape[:-1], n)


def check(device: torch.device, blocks: set[tuple[int, int] | None]) -> str:
    """Run the kernel on small problems against `reference`, with the model's block sizes and every tile
    configuration launch_config picks: '' when they agree, else what went wrong (a Triton build that cannot compile
    it for this GPU, a wrong result)."""
    try:
        generator = torch.Generator(device=device).manual_seed(0)
        for block in blocks:
            weight, scale = quantize(torch.randn(384, 1056, device=device, generator=generator), block)
            for rows in (5, 40, 200):  # each of launch_config's tiles (5 rows: K in slices)
                x = torch.randn(rows, weight.shape[1], device=device, generator=generator).to(torch.bfloat16)
                got, want = fp8_matmul(x, weight, scale, block).float(), reference(x, weight, scale, block).float()
                error = ((got - want).norm() / want.norm()).item()
                if error > 1e-2:
                    return f"its result is off by {error:.1%} (block {block}, {rows} rows)"
        counters = _ARRIVED.get(weight.device)  # keyed by a tensor's device (cuda:0), which `device` may not name
        if counters is not None and counters.any():
            return "its K slices left their arrival counters set"
        return ""
    except Exception as e:  # noqa: BLE001 - whatever Triton raises, the layers can still run dequantized
        return f"{type(e).__name__}: {e}"[:300]


def available(device: torch.device) -> bool:
    """Triton is installed and the GPU has float8 tensor cores (compute capability 8.9 or later)."""
    return triton is not None and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def supports(quantization_config: dict[str, Any]) -> str:
    """Why this kernel cannot run a checkpoint's FP8 layers ('' when it can)."""
    if quantization_config.get("activation_scheme", "dynamic") != "dynamic":
        return "static activation scales"
    if quantization_config.get("scale_fmt", "float") != "float":
        return f"{quantization_config['scale_fmt']} weight scales"
    block = quantization_config.get("weight_block_size")
    if block is not None and not (len(block) == 2 and all(b >= 32 and b & (b - 1) == 0 for b in block)):
        return f"weight blocks of {block}"
    return ""


def fp8_layers(model: torch.nn.Module) -> list[Any]:
    """transformers' FP8Linear layers that hold float8 weights."""
    return [
        m
        for m in model.modules()
        if type(m).__name__ == "FP8Linear" and getattr(m, "weight", None) is not None and m.weight.dtype == FP8
    ]


def other_fp8_modules(model: torch.nn.Module) -> set[str]:
    """Classes of the modules other than FP8Linear that hold float8 weights (transformers' FP8Experts,
    FP8GroupedLinear: they run on its Hub kernel only)."""
    return {
        type(m).__name__
        for m in model.modules()
        if type(m).__name__ != "FP8Linear" and any(p.dtype == FP8 for p in m.parameters(recurse=False))
    }


def block_size(layer: Any) -> tuple[int, int] | None:
    """An FP8Linear's (block_n, block_k), None for a per-tensor scale."""
    return (layer.block_size[0], layer.block_size[1]) if layer.block_size is not None else None


def install(model: torch.nn.Module) -> int:
    """Run every FP8Linear layer of `model` on the kernel above; returns how many."""
    layers = fp8_layers(model)
    for module in layers:
        module.forward = _forward.__get__(module)  # an instance attribute: peft's wrappers still call it
    for device in {module.weight.device for module in layers}:
        _arrived(device)  # now, before any CUDA-graph capture
    return len(layers)


def dequantize(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Give every FP8Linear layer its weight in `dtype` (transformers' FP8Linear then runs F.linear); returns how
    many."""
    layers = fp8_layers(model)
    for module in layers:
        weight = dequantized(module.weight.data, module.weight_scale_inv.data, block_size(module)).to(dtype)
        module.weight = torch.nn.Parameter(weight, requires_grad=False)
    return len(layers)


def _forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    block_n, block_k = block_size(self) or (0, 0)
    out = torch.ops.chatplex.fp8_linear(x, self.weight, self.weight_scale_inv, block_n, block_k)
    return out if self.bias is None else out + self.bias
