"""Greedy agreement of the HF engine with `model.generate` in bf16 on trained weights (issue 6).

Random weights give nearly flat next-token distributions, so bf16 rounding in any summation order flips the argmax
and agreement measures noise, not the engine. A trained model has peaked distributions: this uses the embedded
SmolLM2-135M-Instruct (its GGUF dequantized to safetensors), chat prompts rendered with its template, and compares
the first 32 greedy tokens of the engine (paged attention, CUDA graphs, compiled decode) with `model.generate`
(transformers' SDPA attention, dynamic cache) on the same bf16 weights, and both with fp32 `generate`. Both stop at
EOS as a chat reply does (past EOS a chat model continues on nearly flat distributions, which measures noise
again); a reply's score is its common prefix with the reference over the longer of the two (1.0: identical).

    python benchmarks/gpu_agreement.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out agreement.json
    python benchmarks/gpu_agreement.py --model-dir ~/.cache/chatplex/models/SmolLM2-... --device cpu  # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile

import torch

from chatplex import ChatModel
from chatplex.sampling import build_sampling_params
from chatplex.types import GenerationRequest

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis in two sentences.",
    "List three prime numbers.", "How do I reverse a list in Python?", "What is 12 times 7?",
    "Give me a tip for learning to cook.", "Who wrote Romeo and Juliet?", "Describe a cat to someone who never saw one.",
    "What is the boiling point of water in Fahrenheit?", "Translate 'good morning' into Spanish.",
    "Why is the sky blue?", "Name a famous painting by Leonardo da Vinci.", "What does a CPU do?",
    "Suggest a name for a pet goldfish.", "Summarize the plot of Cinderella in one sentence.",
]


def prefix_fraction(a: list[int], b: list[int], length: int) -> float:
    length = max(min(max(len(a), len(b)), length), 1)
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return same / length


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model_dir = args.model_dir
    if model_dir is None:
        from chatplex.models.embedded import convert_gguf

        model_dir = os.path.join(tempfile.mkdtemp(), "smollm2")
        convert_gguf(args.gguf, model_dir)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    engine_args = {"model_name_or_path": model_dir, "infer_dtype": "bfloat16" if dtype == torch.bfloat16 else "float32",
                   "max_model_len": 2048, "max_num_seqs": 32, "device": args.device}
    if args.device == "cuda":
        engine_args["gpu_memory_utilization"] = 0.3
    model = ChatModel(engine_args)
    tok = model.engine.tokenizer
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
               for q in QUESTIONS]
    prompts = [p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p for p in prompts]
    n = args.length
    sp = build_sampling_params({"max_new_tokens": n, "temperature": 0})

    async def engine_all():
        async def one(p):
            toks: list[int] = []
            async for d in model.agenerate(GenerationRequest(sampling=sp, prompt_token_ids=list(p))):
                toks += d.token_ids
            return toks
        return await asyncio.gather(*(one(p) for p in prompts))

    ours = asyncio.run(engine_all())
    hf = model.engine.model
    hf.set_attn_implementation("sdpa")
    from transformers import AutoModelForCausalLM

    ref32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(args.device).eval()

    def generate(m, p):
        ids = torch.tensor([p], device=args.device)
        out = m.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
        return out[0, len(p):].tolist()

    gaps = []
    with torch.inference_mode():
        for p in prompts:
            top2 = ref32(torch.tensor([p], device=args.device)).logits[0, -1].float().topk(2).values
            gaps.append(float(top2[0] - top2[1]))
    rows = []
    for q, p, mine in zip(QUESTIONS, prompts, ours):
        ref = generate(hf, p)
        fp32 = generate(ref32, p)
        rows.append({
            "question": q, "engine_vs_generate": prefix_fraction(mine, ref, n),
            "engine_vs_generate_positionwise": sum(a == b for a, b in zip(mine, ref)) / max(len(mine), len(ref)),
            "engine_tokens": len(mine), "generate_tokens": len(ref),
            "generate_bf16_vs_fp32": prefix_fraction(ref, fp32, n), "engine_vs_fp32": prefix_fraction(mine, fp32, n),
            "engine_text": tok.decode(mine), "generate_text": tok.decode(ref),
        })
    summary = {k: statistics.mean(r[k] for r in rows) for k in
               ("engine_vs_generate", "engine_vs_generate_positionwise", "generate_bf16_vs_fp32", "engine_vs_fp32")}
    result = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)", "dtype": str(dtype), "device": args.device,
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "prompts": len(prompts),
              "tokens": n, "top2_logit_gap_median": statistics.median(gaps), "summary": summary, "rows": rows}
    model.close()
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    for r in rows[:4]:
        print(repr(r["engine_text"][:80]), "|", repr(r["generate_text"][:80]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
