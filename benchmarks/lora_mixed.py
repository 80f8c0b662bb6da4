"""Mixed-adapter decode throughput vs base-only on the HF engine, side by side in one run.

The embedded SmolLM2-135M-Instruct with random LoRA adapters (peft, `init_lora_weights=False`, saved to a temp
dir). Every row streams the same N chat requests (greedy, exactly max_new_tokens each) through
`ChatModel.agenerate`, all arriving at t=0. The rows run interleaved, one round after another (`--repeats`), and
each row reports its median round, so load drifting on a shared machine hits every row alike:

- base model only: no adapter loaded (the reference, ratio 1.00)
- base requests with the adapters resident: what loading adapters costs requests that use none
- all N on adapter a, unmerged (per-token LoRA hooks)
- mixed: base, a, b round robin in one batch
- adapter a merged into the weights (`adapter_name_or_path` + `merge_lora: true`, LLaMA-Factory's way)

    .venv/bin/python benchmarks/lora_mixed.py                              # 8 streams, 128 tokens, fp32
    .venv/bin/python benchmarks/lora_mixed.py --rank 16 --json benchmarks/results/lora-mixed.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile

from engine_driver import chat_messages, drive_engine, in_ended_thread, machine_info, save_results

from chatplex import ChatModel
from chatplex.bench import RequestRecord, request_metrics, summarize
from chatplex.models.embedded import embedded_model_dir

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_adapters(out_dir: str, names: list[str], rank: int, targets: list[str]) -> dict[str, str]:
    """Random-weight LoRA adapters on the embedded model, one directory per name."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = {}
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
        path = f"{out_dir}/{name}"
        get_peft_model(base, config).save_pretrained(path)
        paths[name] = path
    return paths


async def drive(model: ChatModel, adapters: list[str | None], max_new_tokens: int) -> tuple[list[RequestRecord], float]:
    """One greedy chat request per entry of `adapters` (None: the model as loaded), all at once."""
    extras = [{"adapter": a} for a in adapters]
    return await drive_engine(model, chat_messages(len(adapters)), len(adapters), max_new_tokens, True, extras)


def summarize_row(label: str, runs: list[tuple[list[RequestRecord], float]]) -> dict:
    """The median-throughput run of a row's repeats."""
    sums = [summarize([request_metrics(r, r.start) for r in recs], duration) for recs, duration in runs]
    pick = sorted(sums, key=lambda s: s.output_throughput)[len(sums) // 2]
    return {
        "row": label,
        "requests": pick.completed,
        "output_tokens": pick.total_output_tokens,
        "duration_s": round(pick.duration, 2),
        "output_tok_s": round(pick.output_throughput, 1),
        "all_runs_tok_s": [round(s.output_throughput, 1) for s in sums],
        "tpot_mean_ms": round(pick.tpot.mean, 2) if pick.tpot.mean is not None else None,
        "ttft_mean_ms": round(pick.ttft.mean, 1),
    }


def run_rows(paths: dict[str, str], ns: argparse.Namespace) -> list[dict]:
    """Every row once per round, rounds repeated: on a shared machine the load drifts, and interleaving spreads
    that drift over all rows instead of charging it to whichever row ran last. The three models stay loaded
    (an idle engine waits on its queue and takes no CPU)."""
    n = ns.concurrency
    a, b = list(paths)[:2]
    common = {"infer_dtype": ns.dtype}
    base = ChatModel(common)
    lora = ChatModel({**common, "lora_modules": paths, "max_loras": len(paths)})
    merged = ChatModel({**common, "adapter_name_or_path": paths[a], "merge_lora": True})
    rows = [
        (f"base model only, {n} streams", base, [None] * n),
        (f"base, {len(paths)} adapters resident", lora, [None] * n),
        (f"all {n} on adapter {a} (unmerged)", lora, [a] * n),
        (f"mixed base/{a}/{b}, round robin", lora, [(None, a, b)[i % 3] for i in range(n)]),
        (f"adapter {a} merged (merge_lora)", merged, [None] * n),
    ]
    runs: dict[str, list] = {label: [] for label, _, _ in rows}
    try:
        for _, model, adapters in rows:
            asyncio.run(drive(model, adapters[:3], 4))  # warm-up
        for round_ in range(ns.repeats):
            for label, model, adapters in rows:
                runs[label].append(asyncio.run(drive(model, adapters, ns.max_new_tokens)))
                recs, duration = runs[label][-1]
                tok_s = sum(r.completion_tokens for r in recs) / duration
                print(f"round {round_ + 1}: {label:<40}{tok_s:>8.1f} tok/s", flush=True)
    finally:
        for model in (base, lora, merged):
            model.close()
    out = [summarize_row(label, runs[label]) for label, _, _ in rows]
    for row in out:
        row["ratio_to_base"] = round(row["output_tok_s"] / out[0]["output_tok_s"], 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent streams per row (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32", help="infer_dtype for every row")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the random adapters")
    parser.add_argument("--targets", default=",".join(ALL_LINEAR), help="comma-separated target modules")
    parser.add_argument("--adapters", type=int, default=2, help="how many adapters to build (2 or 3)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all rows; each row's median is reported")
    parser.add_argument("--json", help="write machine info and rows to this file")
    ns = parser.parse_args()
    if ns.adapters < 2:
        parser.error("--adapters: the mixed row needs at least 2")
    info = machine_info()
    print(json.dumps(info))
    with tempfile.TemporaryDirectory() as tmp:
        names = ["a", "b", "c", "d"][: ns.adapters]
        # Built in a thread that ends: no idle OpenMP pool of its own then slows the engine threads.
        paths = in_ended_thread(build_adapters, tmp, names, ns.rank, ns.targets.split(","))
        rows = run_rows(paths, ns)
    print(f"\n{'row':<44}{'tok/s':>8}{'TPOT ms':>9}{'time s':>8}  of base-only")
    for r in rows:
        print(f"{r['row']:<44}{r['output_tok_s']:>8}{r['tpot_mean_ms']:>9}{r['duration_s']:>8}  x{r['ratio_to_base']:.2f}")
    save_results(ns.json, info, ns, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
