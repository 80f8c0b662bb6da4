"""Multi-turn conversations with a shared system prompt, prefix caching on and off side by side (issue 15).

Each of `--conversations` conversations runs `--turns` turns one after another; a turn sends the whole history (the
shared system prompt of about `--system-tokens` tokens, every earlier question and reply) plus a new question and
generates `--reply-tokens` tokens (EOS ignored), which join the history. Conversations run concurrently (at most
`--concurrency`). Reported per turn: TTFT median and p90, and the prompt tokens the engine found cached; overall:
the engine's hit rate, output tok/s. The same workload runs with prefix caching off, then on, on one model load.

    .venv/bin/python benchmarks/multi_turn.py                                # the embedded SmolLM2 on this CPU
    python benchmarks/multi_turn.py --dummy-weights llama-3.2-1b --conversations 64 --concurrency 64 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

from engine_driver import machine_info, save_results

from chatplex import ChatModel

WORDS = ("river mountain lantern copper harvest meadow signal orbit velvet canyon ember quartz willow falcon "
         "harbor thistle prism cobalt saddle glacier").split()


def word_pool(tokenizer: Any) -> list[str]:
    """Words this tokenizer knows: English ones, or (a benchmark's dummy tokenizer, which knows none) its own
    token strings, so that conversations differ in tokens and not only in text."""
    known = [w for w in WORDS if tokenizer.decode(tokenizer.encode(w, add_special_tokens=False)).strip() == w]
    if len(known) >= len(WORDS) // 2:
        return known
    return [tokenizer.decode([i]).strip() for i in range(100, 5100)]


def system_prompt(tokenizer: Any, target_tokens: int, rng: random.Random) -> str:
    """A system prompt of about `target_tokens` tokens of this tokenizer."""
    pool = word_pool(tokenizer)
    words: list[str] = []
    while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) < target_tokens:
        words.extend(rng.choice(pool) for _ in range(16))
    return " ".join(words)


def question(pool: list[str], rng: random.Random) -> str:
    return " ".join(rng.choice(pool) for _ in range(16))


async def run_conversations(
    model: ChatModel, system: str, args: argparse.Namespace, first_id: int = 0
) -> dict[str, Any]:
    sem = asyncio.Semaphore(args.concurrency)
    ttft: dict[int, list[float]] = {t: [] for t in range(args.turns)}
    cached: dict[int, list[int]] = {t: [] for t in range(args.turns)}
    prompt_tokens: dict[int, list[int]] = {t: [] for t in range(args.turns)}
    output_tokens = 0
    pool = word_pool(model.engine.tokenizer)

    async def conversation(c: int) -> None:
        nonlocal output_tokens
        rng = random.Random(c)
        messages: list[dict[str, str]] = [{"role": "system", "content": system}]
        for turn in range(args.turns):
            messages.append({"role": "user", "content": question(pool, rng)})
            request = model.build_request(
                messages, do_sample=False, max_new_tokens=args.reply_tokens, ignore_eos=True
            )
            async with sem:
                start, first, text, last = time.perf_counter(), None, [], None
                async for delta in model.agenerate(request):
                    if first is None and delta.token_ids:
                        first = time.perf_counter()
                    text.append(delta.text)
                    output_tokens += len(delta.token_ids)
                    last = delta
            assert first is not None and last is not None
            ttft[turn].append(first - start)
            cached[turn].append(last.cached_tokens or 0)
            prompt_tokens[turn].append(last.prompt_tokens)
            messages.append({"role": "assistant", "content": "".join(text)})

    start = time.perf_counter()
    await asyncio.gather(*(conversation(first_id + c) for c in range(args.conversations)))
    wall = time.perf_counter() - start
    stats = model.stats()
    per_turn = [
        {
            "turn": t + 1,
            "ttft_p50_ms": 1e3 * statistics.median(ttft[t]),
            "ttft_p90_ms": 1e3 * sorted(ttft[t])[int(0.9 * (len(ttft[t]) - 1))],
            "prompt_tokens_mean": statistics.mean(prompt_tokens[t]),
            "cached_tokens_mean": statistics.mean(cached[t]),
        }
        for t in range(args.turns)
    ]
    later = [x for t in range(1, args.turns) for x in ttft[t]]
    return {
        "per_turn": per_turn,
        "turn2plus_ttft_p50_ms": 1e3 * statistics.median(later) if later else None,
        "output_tok_s": output_tokens / wall,
        "seconds": wall,
        "hit_rate": stats.prefix_cache_hits / stats.prefix_cache_queries if stats.prefix_cache_queries else 0.0,
        "prefix_cache_hits": stats.prefix_cache_hits,
        "prefix_cache_queries": stats.prefix_cache_queries,
    }


def off_and_on(model: ChatModel, args: argparse.Namespace) -> dict[str, Any]:
    """The workload with prefix caching off, then on, on one loaded engine (its block manager's switch flipped
    between runs, the cache emptied before each: the same weights, cache size and compiled graphs for both)."""
    blocks = model.engine.blocks
    system = system_prompt(model.engine.tokenizer, args.system_tokens, random.Random(0))
    results: dict[str, Any] = {}
    for caching in (False, True):
        blocks.prefix_caching = caching
        blocks.reset_prefix_cache()
        queried, hits = blocks.queried_tokens, blocks.hit_tokens
        # Warm-up: two other conversations' first turns (a running server has the system prompt cached).
        warm_up = argparse.Namespace(**{**vars(args), "turns": 1, "conversations": 2})
        asyncio.run(run_conversations(model, system, warm_up, first_id=10_000))
        run = asyncio.run(run_conversations(model, system, args))
        run["hit_rate"] = (blocks.hit_tokens - hits) / max(blocks.queried_tokens - queried, 1)
        results["on" if caching else "off"] = run
    off, on = results["off"], results["on"]
    print(f"{'turn':>4} {'TTFT p50 off':>13} {'TTFT p50 on':>12} {'speed-up':>9} {'prompt':>7} {'cached':>7}")
    for a, b in zip(off["per_turn"], on["per_turn"]):
        print(f"{a['turn']:>4} {a['ttft_p50_ms']:>11.1f}ms {b['ttft_p50_ms']:>10.1f}ms "
              f"{a['ttft_p50_ms'] / b['ttft_p50_ms']:>8.2f}x {b['prompt_tokens_mean']:>7.0f} "
              f"{b['cached_tokens_mean']:>7.0f}")
    ratio = off["turn2plus_ttft_p50_ms"] / on["turn2plus_ttft_p50_ms"]
    print(f"turns 2+: TTFT p50 {off['turn2plus_ttft_p50_ms']:.1f} ms off, {on['turn2plus_ttft_p50_ms']:.1f} ms on "
          f"({ratio:.2f}x); hit rate {on['hit_rate']:.1%}; output tok/s {off['output_tok_s']:.0f} off, "
          f"{on['output_tok_s']:.0f} on", flush=True)
    return {**results, "turn2plus_ttft_speedup": ratio}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--reply-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model_name_or_path (default: the embedded SmolLM2)")
    parser.add_argument("--dummy-weights", default=None, help="a named random-weight shape (GPU runs)")
    parser.add_argument("--json", default=None, help="write the results here")
    add_arguments(parser)
    args = parser.parse_args()
    info = machine_info()
    config: dict[str, Any] = {"max_num_seqs": max(args.concurrency, 8)}
    if args.model:
        config["model_name_or_path"] = args.model
    if args.dummy_weights:
        config["dummy_weights"] = args.dummy_weights
    with ChatModel(config) as model:
        results = off_and_on(model, args)
    save_results(args.json, info, args, **results)


if __name__ == "__main__":
    main()
