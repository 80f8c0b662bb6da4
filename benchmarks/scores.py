"""Reward scores/s on the HF engine: batches of 1, 8 and 64 inputs per get_scores call vs one input per call
(LLaMA-Factory's way). The model is the embedded SmolLM2-135M's shape with a one-label classifier head
(random head weights: speed does not depend on them).

    python benchmarks/scores.py [--inputs 128] [--dtype float32]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    from chatplex import ChatModel

    with tempfile.TemporaryDirectory() as tmp:
        build_reward_model(tmp)
        with ChatModel({"model_name_or_path": tmp, "infer_dtype": args.dtype, "max_num_batched_tokens": 4096}) as model:
            texts = inputs(args.inputs)
            model.get_scores(texts[:8])  # warm-up
            print(f"device={model.engine.device} dtype={model.engine.dtype} inputs={len(texts)}")
            for batch in (1, 8, 64):
                start = time.perf_counter()
                for i in range(0, len(texts), batch):
                    model.get_scores(texts[i : i + batch])
                elapsed = time.perf_counter() - start
                label = "one at a time" if batch == 1 else f"batch {batch}"
                print(f"{label:>14}: {len(texts) / elapsed:8.1f} scores/s")


if __name__ == "__main__":
    main()
