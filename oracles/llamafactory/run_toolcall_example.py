"""LLaMA-Factory's scripts/api_example/test_toolcall.py, unchanged, against its own API server: what it prints there.

Runs in LLaMA-Factory's environment (`make lf-toolcall`). Starts `llamafactory-cli api` on the embedded SmolLM2 with
the tool-calling LoRA of tests/fixtures/llamafactory/toolcall_lora/ (trained by its own trainer,
oracles/llamafactory/train_toolcall_lora.py), `template: qwen`, float32 and greedy (`do_sample: false`: the script
sends no sampling parameters, so the server's defaults decide), runs the script there with CLIENT_PYTHON (an
interpreter with the openai package, which LLaMA-Factory's environment lacks) and writes its exit status and output
to tests/fixtures/llamafactory/toolcall_example.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from run_api_server import free_port, wait

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "llamafactory"


def main(smollm_dir: str, client_python: str, out: Path) -> None:
    port = free_port()
    cli = shutil.which("llamafactory-cli", path=os.path.dirname(sys.executable))
    env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port), "API_VERBOSE": "0"}
    server = subprocess.Popen(
        [cli, "api", "--model_name_or_path", smollm_dir, "--adapter_name_or_path", str(FIXTURES / "toolcall_lora"),
         "--finetuning_type", "lora", "--template", "qwen", "--infer_backend", "huggingface",
         "--infer_dtype", "float32", "--do_sample", "false"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(f"http://127.0.0.1:{port}", server)
        run = subprocess.run([client_python, str(FIXTURES / "api_example" / "test_toolcall.py")],
                             env={**os.environ, "API_PORT": str(port)}, capture_output=True, text=True, timeout=600)
    finally:
        server.terminate()
        server.wait(timeout=60)
    result = {"llamafactory": version("llamafactory"), "returncode": run.returncode, "stdout": run.stdout}
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1), run.stderr[-2000:], sep="\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
