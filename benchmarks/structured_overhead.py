"""Per-token cost of constrained decoding (llguidance) on the embedded model: the same requests with and without a
JSON schema, batch 1 and 8, side by side in one run.

    python benchmarks/structured_overhead.py [--tokens 64] [--dtype float32]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from chatplex import ChatModel

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 8},
        "summary": {"type": "string", "maxLength": 400},
    },
    "required": ["name", "tags", "summary"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "card", "schema": SCHEMA}}
QUESTIONS = ["Describe Paris.", "Describe the sea.", "Describe a cat.", "Describe Python.", "Describe the sun.",
             "Describe music.", "Describe a forest.", "Describe winter."]


async def run(model: ChatModel, batch: int, tokens: int, constrained: bool) -> float:
    kwargs = {"response_format": FORMAT} if constrained else {}

    async def one(q: str) -> int:
        [r] = await model.achat([{"role": "user", "content": q}], do_sample=False, max_new_tokens=tokens,
                                ignore_eos=True, **kwargs)
        return r.response_length

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(q) for q in QUESTIONS[:batch]))
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    with ChatModel({"infer_dtype": args.dtype}) as model:
        asyncio.run(run(model, 1, 8, True))  # warm-up: builds llguidance's tokenizer once
        print("| batch | free tok/s | json_schema tok/s | ratio |\n| ---: | ---: | ---: | ---: |")
        for batch in (1, 8):
            free = asyncio.run(run(model, batch, args.tokens, False))
            constrained = asyncio.run(run(model, batch, args.tokens, True))
            print(f"| {batch} | {free:.1f} | {constrained:.1f} | {constrained / free:.2f} |", flush=True)


if __name__ == "__main__":
    main()
