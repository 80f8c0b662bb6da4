"""The FP8 linear kernel (engines/hf/fp8_matmul.py) on a GPU: its error against the same arithmetic in torch, and
its time against bf16 `F.linear` on one model's layer shapes, for each launch configuration tried.

    python benchmarks/fp8_matmul.py --sweep --out fp8_matmul.json [--rows 1,16]

Decode rows (16 or fewer) sweep the column tile, the number of K slices, warps and stages, and keep every timing
(`sweep`), so a launch heuristic can be read off them; more rows sweep the row and column tiles.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from chatplex.engines.hf import fp8_matmul

# Llama-3.1-8B's linear layers (in, out).
SHAPES = {"q": (4096, 4096), "kv": (4096, 1024), "o": (4096, 4096), "gate": (4096, 14336), "down": (14336, 4096)}
ROWS = (1, 8, 16, 32, 64, 128, 512, 2048)
SWEEP_ROWS = (1, 8, 16, 64, 512, 2048)


def configs(m: int) -> list[dict[str, int]]:
    if m <= 16:
        return [{"BLOCK_M": 16, "BLOCK_N": bn, "SPLIT_K": split, "num_warps": warps, "num_stages": stages}
                for bn, split, warps, stages in itertools.product((16, 32, 64, 128), (1, 2, 4, 8, 16), (2, 4, 8), (3, 5))]
    return [{"BLOCK_M": bm, "BLOCK_N": bn, "SPLIT_K": 1, "num_warps": warps, "num_stages": stages}
            for bm, bn, warps, stages in itertools.product((16, 32, 64, 128), (16, 32, 64, 128), (2, 4, 8), (2, 3, 4, 6))
            if min(m, 64) <= bm <= max(16, 2 * m) and not (bm == 128 and bn == 128 and stages > 4)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true", help="also time every launch configuration")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rows", default=",".join(map(str, ROWS)), help="comma-separated row counts")
    args = ap.parse_args()
    torch.manual_seed(0)
    result: dict = {"gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"), "rows": []}
    for (name, (k, n)), m in itertools.product(SHAPES.items(), map(int, args.rows.split(","))):
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        q, s = fp8_matmul.quantize(w, (128, 128))
        got = fp8_matmul.fp8_matmul(x, q, s, (128, 128))
        want = fp8_matmul.reference(x, q, s, (128, 128))
        exact = x.float() @ w.float().T
        row = {
            "layer": name, "m": m, "n": n, "k": k,
            "max_err_vs_reference": (got.float() - want.float()).abs().max().item(),
            "rel_err_vs_bf16_weights": ((got.float() - exact).norm() / exact.norm()).item(),
            "bf16_us": do_bench(lambda: F.linear(x, w)) * 1e3,
            "fp8_us": do_bench(lambda: fp8_matmul.fp8_matmul(x, q, s, (128, 128))) * 1e3,
            "default_config": fp8_matmul.launch_config(m, n, k, x.device),
        }
        if args.sweep and m in SWEEP_ROWS:
            timings = []
            for cfg in configs(m):
                try:
                    t = do_bench(lambda: fp8_matmul.fp8_matmul(x, q, s, (128, 128), **cfg), warmup=5, rep=20) * 1e3
                except Exception:  # noqa: BLE001 - a tile that does not fit shared memory
                    continue
                timings.append((t, cfg))
            if timings:
                row["best_us"], row["best_config"] = min(timings, key=lambda tc: tc[0])
            if m <= 16:
                row["sweep"] = [[round(t, 2), cfg] for t, cfg in timings]
        row["speedup_vs_bf16"] = row["bf16_us"] / row.get("best_us", row["fp8_us"])
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        if args.out:  # after every row: a run cut short keeps what it measured
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
