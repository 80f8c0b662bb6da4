"""Soak: `chatplex serve` under a steady mixed load for a long time, its memory, file descriptors and threads sampled.

The load (8 clients by default, each one request after another): chat and completions, streaming and not, n=2
now and then, and about one request in eight abandoned by its client part-way (a stream closed after its first
chunks, a non-streaming request whose connection is dropped). Every 30 s the RSS, open fds and threads of the
server and its child processes (the engine process, with --serve-args --engine-process) are read from /proc. A
request is "lost" when it fails in a way the server should not fail: a 5xx, a transport error on a request the
client did not abandon, or a reply that breaks OpenAI's shape.

    .venv/bin/python benchmarks/soak.py                                  # 1 hour, the embedded model
    .venv/bin/python benchmarks/soak.py --minutes 10 --json benchmarks/results/soak.json --plot soak.png
    .venv/bin/python benchmarks/soak.py --minutes 30 --serve-args=--engine-process      # the engine in its own process

Growth is reported after the warm-up (`--warmup-minutes`, 5 by default): (RSS at the end - RSS at the warm-up's
end) / RSS at the warm-up's end, with the least-squares slope in MiB per hour over the same span.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field

import httpx
import psutil
from engine_driver import machine_info, save_results
from http_overhead import start_server, stop_server

PROMPTS = ["Tell me a story about a fox.", "List three colours.", "What is 12 times 7?", "Write a haiku about rain.",
           "Explain what a CPU does.", "Name a city in France."]


@dataclass
class Tally:
    done: int = 0
    abandoned: int = 0
    lost: int = 0
    errors: list[str] = field(default_factory=list)

    def lose(self, why: str) -> None:
        self.lost += 1
        if len(self.errors) < 20:
            self.errors.append(why)


def proc_sample(pid: int) -> dict[str, float]:
    """The server and every process under it (an engine process, `engine_process: true`), summed; each one's RSS
    is kept too (rss_mib_by_pid). FileNotFoundError when the server itself is gone."""
    try:
        server = psutil.Process(pid)
        tree = [server, *server.children(recursive=True)]
    except psutil.NoSuchProcess:
        raise FileNotFoundError(pid) from None
    per = {}
    for proc in tree:
        try:
            with proc.oneshot():
                per[proc.pid] = (proc.memory_info().rss / 2**20, proc.num_threads(), proc.num_fds())
        except psutil.NoSuchProcess:  # ended between the listing and the read
            if proc.pid == pid:
                raise FileNotFoundError(pid) from None
    return {
        "rss_mib": sum(v[0] for v in per.values()),
        "threads": sum(v[1] for v in per.values()),
        "fds": sum(v[2] for v in per.values()),
        "processes": len(per),
        "rss_mib_by_pid": {str(p): round(v[0], 1) for p, v in per.items()},
    }


async def one_request(client: httpx.AsyncClient, rng: random.Random, tally: Tally, max_tokens: int) -> None:
    chat = rng.random() < 0.6
    stream = rng.random() < 0.5
    abandon = rng.random() < 0.125
    body: dict = {"max_tokens": max_tokens, "temperature": 0.8, "stream": stream}
    if rng.random() < 0.2:
        body["n"] = 2
    prompt = rng.choice(PROMPTS)
    if chat:
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/v1/completions", prompt
    try:
        if stream:
            async with client.stream("POST", path, json=body) as r:
                if r.status_code != 200:
                    tally.lose(f"{r.status_code} {(await r.aread())[:200]!r}")
                    return
                chunks = 0
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        json.loads(line[6:])["choices"]  # noqa: B018 - the shape is part of the check
                        chunks += 1
                        if abandon and chunks >= 3:
                            tally.abandoned += 1
                            return  # leaving the block closes the stream mid-way
        elif abandon:
            try:
                await client.post(path, json=body, timeout=0.3)  # gives up before the reply: the client leaves
            except httpx.TimeoutException:
                pass
            tally.abandoned += 1
            return
        else:
            r = await client.post(path, json=body)
            if r.status_code != 200:
                tally.lose(f"{r.status_code} {r.text[:200]}")
                return
            if len(r.json()["choices"]) != body.get("n", 1):
                tally.lose(f"choices: {r.text[:200]}")
                return
        tally.done += 1
    except (httpx.HTTPError, ValueError, KeyError) as e:
        tally.lose(f"{type(e).__name__}: {e}")


async def client_loop(url: str, deadline: float, seed: int, tally: Tally, max_tokens: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < deadline:
            await one_request(client, rng, tally, max_tokens)


async def sampler(pid: int, start: float, deadline: float, every: float, samples: list[dict]) -> None:
    while True:
        try:
            samples.append({"t_s": round(time.monotonic() - start, 1), **proc_sample(pid)})
        except FileNotFoundError:  # the server process is gone: the clients' lost requests say the rest
            print(f"process {pid} is gone", flush=True)
            return
        s = samples[-1]
        print(f"{s['t_s'] / 60:6.1f} min  RSS {s['rss_mib']:8.1f} MiB  fds {s['fds']:4}  threads {s['threads']:3}  "
              f"processes {s['processes']}",
              flush=True)
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(every, max(deadline - time.monotonic(), 0.0)))


def growth(samples: list[dict], warmup_s: float) -> dict[str, float]:
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 2:
        return {}
    xs = [s["t_s"] / 3600 for s in after]
    ys = [s["rss_mib"] for s in after]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return {
        "rss_at_warmup_mib": ys[0], "rss_end_mib": ys[-1], "rss_max_mib": max(ys),
        "growth_pct": round(100 * (ys[-1] - ys[0]) / ys[0], 2), "slope_mib_per_hour": round(slope, 1),
        "fds_first": after[0]["fds"], "fds_last": after[-1]["fds"],
        "threads_first": after[0]["threads"], "threads_last": after[-1]["threads"],
    }


def plot(samples: list[dict], warmup_s: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t_s"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(minutes, [s["rss_mib"] for s in samples])
    top.axvline(warmup_s / 60, color="grey", linestyle=":", label="end of warm-up")
    top.set_ylabel("RSS (MiB)")
    top.legend()
    bottom.plot(minutes, [s["fds"] for s in samples], label="open fds")
    bottom.plot(minutes, [s["threads"] for s in samples], label="threads")
    bottom.set_xlabel("minutes")
    bottom.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)


async def soak(args: argparse.Namespace, url: str, pid: int) -> tuple[Tally, list[dict]]:
    tally, samples = Tally(), []
    start = time.monotonic()
    deadline = start + args.minutes * 60
    await asyncio.gather(
        sampler(pid, start, deadline, args.sample_every, samples),
        *(client_loop(url, deadline, seed, tally, args.max_tokens) for seed in range(args.clients)),
    )
    if os.path.exists(f"/proc/{pid}"):
        samples.append({"t_s": round(time.monotonic() - start, 1), **proc_sample(pid)})
    return tally, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--warmup-minutes", type=float, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--sample-every", type=float, default=30)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--log", default="/tmp/chatplex-soak-server.log")
    parser.add_argument("--url", default=None, help="soak a server already running (with --pid: its process id)")
    parser.add_argument("--pid", type=int, default=None)
    parser.add_argument("--serve-args", default="", help="more `chatplex serve` flags, e.g. '--engine-process'")
    args = parser.parse_args()

    info = machine_info()
    if args.url:
        tally, samples = asyncio.run(soak(args, args.url, args.pid or os.getpid()))
    else:
        proc, url = start_server(args.dtype, args.log, tuple(args.serve_args.split()))
        try:
            tally, samples = asyncio.run(soak(args, url.removesuffix("/v1"), proc.pid))
        finally:
            stop_server(proc)
    summary = growth(samples, args.warmup_minutes * 60)
    print(json.dumps({"requests_done": tally.done, "abandoned": tally.abandoned, "lost": tally.lost, **summary},
                     indent=2))
    for why in tally.errors:
        print("lost:", why, file=sys.stderr)
    save_results(args.json, info, args, requests_done=tally.done, abandoned=tally.abandoned, lost=tally.lost,
                 lost_examples=tally.errors, summary=summary, samples=samples)
    if args.plot:
        plot(samples, args.warmup_minutes * 60, args.plot,
             f"chatplex serve soak: {args.clients} clients, {args.minutes:.0f} min, {tally.done} requests")
    return 1 if tally.lost else 0


if __name__ == "__main__":
    sys.exit(main())
