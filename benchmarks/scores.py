"""Reward scores/s on the HF engine: batches of 1, 8 and 64 inputs per get_scores call vs one input per call
(LLaMA-Factory's way), side by side in one run. The model is the embedded SmolLM2-135M's shape with a one-label
classifier head (random head weights: speed does not depend on them).

Rows:
- transformers forward, one input at a time: what LLaMA-Factory's HF engine does per `/v1/score/evaluation`
  request (tokenize, one forward pass, read the score), the plain baseline
- chatplex get_scores with 1, 8 and 64 inputs per call, calls one after another
- chatplex, 64 one-input aget_scores requests in flight at once: the engine's scheduler batches independent
  requests, as a server sees them

    .venv/bin/python benchmarks/scores.py [--inputs 128] [--dtype float32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from engine_driver import in_ended_thread, machine_info, save_results


def build_reward_model(path: str) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from chatplex.models.embedded import embedded_model_dir

    src = embedded_model_dir()
    config = AutoConfig.from_pretrained(src, num_labels=1, architectures=["LlamaForSequenceClassification"])
    config.pad_token_id = config.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src, config=config)  # body from SmolLM2, new head
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(src).save_pretrained(path)


def inputs(n: int) -> list[str]:
    base = "User asked about topic {i}. The assistant answered with a detailed reply about item {i}: " + "more words " * 10
    return [base.format(i=i) * (1 + i % 3) for i in range(n)]


def timed(label: str, n: int, fn: Callable[[], None]) -> dict:
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    row = {"row": label, "inputs": n, "duration_s": round(elapsed, 2), "scores_s": round(n / elapsed, 1)}
    print(f"{label:<52}{row['scores_s']:>10}{row['duration_s']:>9}", flush=True)
    return row


def transformers_one_at_a_time(path: str, texts: list[str], dtype: torch.dtype) -> dict:
    """One input per forward pass, no padding, the score at the last token (no chatplex involved)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).eval()

    def run(batch: list[str] = texts) -> None:
        with torch.inference_mode():
            for text in batch:
                model(**tok(text, return_tensors="pt")).logits[0, 0].item()

    run(texts[:4])  # warm-up
    return timed("transformers forward, one at a time (baseline)", len(texts), run)


def chatplex_rows(path: str, texts: list[str], dtype: str) -> tuple[list[dict], torch.dtype]:
    """The chatplex rows, and the dtype the engine ran in."""
    from chatplex import ChatModel

    rows = []
    with ChatModel({"model_name_or_path": path, "infer_dtype": dtype, "max_num_batched_tokens": 4096}) as model:
        model.get_scores(texts[:8])  # warm-up
        print(f"device={model.engine.device} dtype={model.engine.dtype} inputs={len(texts)}")
        for batch in (1, 8, 64):
            def run(batch: int = batch) -> None:
                for i in range(0, len(texts), batch):
                    model.get_scores(texts[i : i + batch])

            label = "chatplex get_scores, 1 per call (one at a time)" if batch == 1 else f"chatplex get_scores, {batch} per call"
            rows.append(timed(label, len(texts), run))

        async def concurrent(width: int = 64) -> None:
            gate = asyncio.Semaphore(width)

            async def one(text: str) -> None:
                async with gate:
                    await model.aget_scores([text])

            await asyncio.gather(*(one(t) for t in texts))

        rows.append(timed("chatplex, 64 one-input requests in flight", len(texts), lambda: asyncio.run(concurrent())))
        resolved = model.engine.dtype
    return rows, resolved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", help="write machine info and rows to this file")
    args = parser.parse_args()
    info = machine_info()
    print(json.dumps(info))
    print(f"{'row':<52}{'scores/s':>10}{'time s':>9}")
    texts = inputs(args.inputs)
    with tempfile.TemporaryDirectory() as tmp:
        # Building and the baseline run in threads that end, so no idle OpenMP pool of theirs slows the engine
        # thread afterwards (engine_driver.in_ended_thread); the baseline still runs first, on a quiet process.
        in_ended_thread(build_reward_model, tmp)
        baseline = in_ended_thread(transformers_one_at_a_time, tmp, texts, getattr(torch, args.dtype))
        rows = [baseline, *chatplex_rows(tmp, texts, args.dtype)[0]]
    base = rows[0]["scores_s"]
    for row in rows:
        row["ratio_to_baseline"] = round(row["scores_s"] / base, 2)
        print(f"{row['row']:<52} x{row['ratio_to_baseline']:.2f}")
    save_results(args.json, info, args, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
