"""torch.compile's caches go to chatplex's cache folder: a second process compiling the same function loads it from
there (Inductor's FX-graph cache hit), where the first compiled it (a miss). Runs torch.compile on the CPU, the same
caches a GPU's decode graphs use."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, torch
from chatplex.engines.hf.compile_cache import use_persistent_compile_cache
root = use_persistent_compile_cache()
from torch._dynamo.utils import counters
step = torch.compile(lambda x: (x * 2).sin() + x.cos(), dynamic=False)
step(torch.ones(8))
print(json.dumps({"root": root, "hit": counters["inductor"]["fxgraph_cache_hit"],
                  "miss": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def _run(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_start_loads_what_the_first_compiled(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["CHATPLEX_CACHE_DIR"] = str(tmp_path)
    first, second = _run(env), _run(env)
    assert first["root"] == str(tmp_path / "torch_compile")
    assert (first["miss"], first["hit"]) == (1, 0)
    assert (second["miss"], second["hit"]) == (0, 1)
    assert any((tmp_path / "torch_compile" / "inductor").iterdir())


def test_a_cache_folder_the_user_set_wins(tmp_path):
    env = {**os.environ, "CHATPLEX_CACHE_DIR": str(tmp_path / "ours"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "theirs")}
    _run(env)
    assert any((tmp_path / "theirs").iterdir()) and not (tmp_path / "ours" / "torch_compile" / "inductor").exists()
