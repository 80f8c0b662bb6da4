"""LLaMA-Factory's scripts/api_example/test_toolcall.py, unchanged, against `chatplex api`: it prints what it
prints against `llamafactory-cli api`.

The script (fixtures/llamafactory/api_example/, Apache-2.0) asks for a GPA with a `calculate_gpa` tool, runs the
call it gets back and sends the result as a `tool` message, with the official openai client, model "test" and no
sampling parameters. Its model is a LoRA of SmolLM2 that LLaMA-Factory's own trainer taught to call that tool in the
qwen format (fixtures/llamafactory/toolcall_lora/), served as its users serve it: a YAML with the adapter,
`template: qwen` and `do_sample: false`, and `API_PORT`. LLaMA-Factory 0.9.5's server ran the same
(`make lf-toolcall`, oracles/llamafactory/run_toolcall_example.py) and toolcall_example.json holds what the script
printed there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import ServerProcess

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "llamafactory"

pytestmark = pytest.mark.slow


class ApiProcess(ServerProcess):
    """`chatplex api CONFIG` as LLaMA-Factory users start `llamafactory-cli api`: address from API_HOST/API_PORT."""

    def __init__(self, config: Path, log_path: Path) -> None:
        from tests.server.conftest import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(self.port)}
        self.proc = subprocess.Popen([sys.executable, "-m", "chatplex.cli.main", "api", str(config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)


def test_toolcall_example_prints_what_llamafactory_prints(smollm_dir, tmp_path):
    pytest.importorskip("peft")
    want = json.loads((FIXTURES / "toolcall_example.json").read_text(encoding="utf-8"))
    config = tmp_path / "smollm_toolcall.yaml"
    config.write_text(f"model_name_or_path: {smollm_dir}\nadapter_name_or_path: {FIXTURES / 'toolcall_lora'}\n"
                      "finetuning_type: lora\ntemplate: qwen\ninfer_dtype: float32\ndo_sample: false\n")
    server = ApiProcess(config, tmp_path / "api.log").wait_ready()
    try:
        run = subprocess.run([sys.executable, str(FIXTURES / "api_example" / "test_toolcall.py")],
                             env={**os.environ, "API_PORT": str(server.port)}, capture_output=True, text=True,
                             timeout=600)
    finally:
        server.stop()
    assert run.returncode == want["returncode"] == 0, run.stderr[-3000:]
    assert run.stdout == want["stdout"]
