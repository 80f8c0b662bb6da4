"""Shared by the benchmark scripts: prompts, the chatplex engine driven in-process, and a plain HF baseline.

Both drivers return `chatplex.bench.RequestRecord`s, so every number goes through the same arithmetic as
`chatplex bench` (chatplex.bench.metrics). Every request "arrives" at the start of the run; TTFT therefore includes
the time a request waits for earlier ones, which is what a user of a one-at-a-time engine sees.
"""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import threading
import time
from datetime import datetime, timezone
from typing import Any

from chatplex.bench import RequestRecord

QUESTIONS = (
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
    "What does a compiler do?",
    "Give me a tip for learning to cook.",
    "Why is the sky blue?",
    "Describe a cat to someone who has never seen one.",
    "What is the difference between weather and climate?",
    "Suggest a name for a bakery.",
    "How do vaccines work?",
    "What is a prime number?",
    "Summarise the plot of Romeo and Juliet.",
    "What should I pack for a day hike?",
    "How does a bicycle stay upright?",
    "Tell me a fun fact about octopuses.",
)


def chat_messages(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(n)]


async def drive_engine(
    model: Any,
    conversations: list[list[dict[str, Any]]],
    concurrency: int,
    max_new_tokens: int,
    ignore_eos: bool,
    request_kwargs: list[dict[str, Any]] | None = None,
) -> tuple[list[RequestRecord], float]:
    """Stream every conversation through `ChatModel.agenerate`, at most `concurrency` at once, greedy;
    `request_kwargs[i]` adds to (or overrides) request i's arguments (an adapter, its own max_new_tokens).

    Returns one record per request (a chunk is a delta that carries text) and the wall duration. A request's
    start is when it gets a slot, as `chatplex bench` counts it; with concurrency >= requests that is t=0.
    """
    gate = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()

    async def one(messages: list[dict[str, Any]], extra: dict[str, Any]) -> RequestRecord:
        async with gate:
            kwargs = {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": ignore_eos, **extra}
            request = model.build_request(messages, **kwargs)
            record = RequestRecord(start=time.perf_counter())
            async for delta in model.agenerate(request):
                if delta.text:
                    record.chunk_times.append(time.perf_counter())
                record.prompt_tokens, record.completion_tokens = delta.prompt_tokens, delta.completion_tokens
            record.end = time.perf_counter()
            return record

    extras = request_kwargs or [{}] * len(conversations)
    records = await asyncio.gather(*(one(m, extra) for m, extra in zip(conversations, extras)))
    return list(records), time.perf_counter() - t0


def run_engine(model: Any, conversations: list, concurrency: int, max_new_tokens: int, ignore_eos: bool):
    return asyncio.run(drive_engine(model, conversations, concurrency, max_new_tokens, ignore_eos))


class _FirstTokenClock:
    """A transformers streamer that notes when `generate` produces its first new token."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def load_baseline(model_dir: str, dtype: Any) -> tuple[Any, Any]:
    """The model as LLaMA-Factory's HF engine holds it: transformers, eval mode, the given dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    return model, tokenizer


def run_baseline(
    model: Any, tokenizer: Any, conversations: list, max_new_tokens: int, ignore_eos: bool
) -> tuple[list[RequestRecord], float]:
    """One `model.generate` call at a time, greedy, as LLaMA-Factory's HF engine serves requests."""
    import torch

    records = []
    t0 = time.perf_counter()
    for messages in conversations:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        clock = _FirstTokenClock()
        with torch.inference_mode():
            out = model.generate(
                **ids, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                min_new_tokens=max_new_tokens if ignore_eos else None, streamer=clock,
                pad_token_id=tokenizer.eos_token_id,
            )
        end = time.perf_counter()
        prompt_len = ids["input_ids"].shape[1]
        record = RequestRecord(start=t0, end=end, prompt_tokens=prompt_len, completion_tokens=out.shape[1] - prompt_len)
        # generate yields no per-token times to a caller; the first token's time and the end bound TTFT and TPOT.
        record.chunk_times = [clock.first or end, end]
        records.append(record)
    return records, time.perf_counter() - t0


def run_static_batch(
    model: Any, tokenizer: Any, conversations: list, max_new_tokens: int, ignore_eos: bool
) -> tuple[list[RequestRecord], float]:
    """A reference, not a serving engine: all prompts left-padded into one `generate` call (no joining or leaving,
    no streaming). Its step time is what the model's forward costs at this batch size."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    tokenizer.padding_side = side
    clock = _FirstTokenClock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
            min_new_tokens=max_new_tokens if ignore_eos else None, streamer=clock, pad_token_id=tokenizer.eos_token_id,
        )
    end = time.perf_counter()
    new = out[:, enc["input_ids"].shape[1]:]
    records = []
    for i in range(len(conversations)):
        n = int((new[i] != tokenizer.eos_token_id).sum()) if not ignore_eos else new.shape[1]
        records.append(RequestRecord(start=t0, end=end, chunk_times=[clock.first or end, end],
                                     prompt_tokens=int(enc["attention_mask"][i].sum()), completion_tokens=n))
    return records, end - t0


def machine_info() -> dict[str, str]:
    """What BENCHMARKS.md records about a run: date, CPU, load, versions."""
    import torch
    import transformers

    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": sh("lscpu | grep 'Model name' | sed 's/.*: *//'"),
        "cores": sh("grep -c ^processor /proc/cpuinfo"),
        "load_average": sh("cut -d' ' -f1-3 /proc/loadavg"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": str(torch.get_num_threads()),
    }


def save_results(path: str | None, info: dict[str, Any], args: Any, **results: Any) -> None:
    """Machine info (with the load average now, after the run), the command's arguments and the results, as JSON."""
    info["load_average_after"] = machine_info()["load_average"]
    if path:
        with open(path, "w") as f:
            json.dump({"machine": info, "args": vars(args), **results}, f, indent=2)


def in_ended_thread(fn: Any, *args: Any) -> Any:
    """`fn(*args)` in a thread that ends before this returns. Baselines run this way: a thread that has run torch
    on the CPU keeps an idle OpenMP pool for as long as it lives, and while one is alive another thread's forward
    passes (the engine's) run 1.5x slower on a 2-core machine (chatplex.engines.hf.fresh_thread)."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
