"""Engine start-up, cold and warm (issue 15): the same model started in fresh processes one after another, the first
with an empty chatplex cache folder (CHATPLEX_CACHE_DIR: torch.compile's Inductor and Triton caches), the next ones
reusing it. Each start logs its phases (weights and tokenizer / KV cache and decode graphs / the rest).

    python benchmarks/startup.py --shape llama-3.1-8b --starts 2 --out startup.json [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, logging, sys, time
t = time.perf_counter()
logging.basicConfig(level=logging.INFO, format="%(message)s")
from chatplex import ChatModel
model = ChatModel(json.loads(sys.argv[1]))
ready = time.perf_counter() - t
out = model.chat([{"role": "user", "content": "hi"}], max_new_tokens=4)
print("RESULT", json.dumps({"ready_s": ready}), flush=True)
model.close()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    settings = {"dummy_weights": args.shape, "infer_dtype": "bfloat16", "max_model_len": 2048,
                "compile": False if args.no_compile else None}
    # TORCH_LOGS=recompiles: each start counts torch.compile's recompiles in its process (the decode step is all it
    # compiles).
    env = {**os.environ, "CHATPLEX_CACHE_DIR": tempfile.mkdtemp(prefix="chatplex-cache-"), "TORCH_LOGS": "recompiles"}
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        env.pop(name, None)
    result: dict = {"settings": settings, "date": time.strftime("%Y-%m-%d"), "starts": []}
    for i in range(args.starts):
        t = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], env=env, capture_output=True,
                             text=True, timeout=900)
        lines = (run.stdout + run.stderr).splitlines()
        found = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("RESULT ")]
        phases = [line for line in lines if line.startswith(("Start-up", "Loaded"))]
        entry = {"kind": "cold" if i == 0 else "warm", "process_s": time.perf_counter() - t,
                 **(found[0] if found else {"error": "\n".join(lines[-15:])}), "log": phases,
                 "recompiles": sum("Recompiling function" in line for line in lines)}
        result["starts"].append(entry)
        print(json.dumps(entry), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
