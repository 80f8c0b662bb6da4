"""LLaMA-Factory's own API server (`llamafactory-cli api`) on the embedded SmolLM2: the responses chatplex's server
must give to the same requests.

Runs in LLaMA-Factory's environment (`make lf-diff`). For each template of tests/fixtures/llamafactory/
api_requests.json it starts `llamafactory-cli api --model_name_or_path SMOLLM --template T --infer_dtype float32` as a
user does (for its family_templates, a tiny random model of the family instead of SmolLM2), sends every request there (in the shape of its scripts/api_example: model "test", tools; greedy), and
writes the responses to tests/fixtures/llamafactory/api_replies.json.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `llamafactory-cli api` as its console script runs it, with the Llama 3 tool prompt's date pinned (fixed_date.py).
_CLI = ("import sys; from fixed_date import pin_llamafactory_date; pin_llamafactory_date(); "
        "from llamafactory.cli import main; sys.argv[0] = 'llamafactory-cli'; sys.exit(main())")


def serve(smollm_dir: str, template: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port), "API_VERBOSE": "0",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", _CLI, "api", "--model_name_or_path", smollm_dir, "--template",
                             template, "--infer_backend", "huggingface", "--infer_dtype", "float32"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llamafactory-cli api exited with {proc.returncode}")
        try:
            if requests.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(1)
    raise RuntimeError("llamafactory-cli api did not start")


def model_for(template: str, smollm_dir: str, family: bool) -> str:
    """SmolLM2, or for a family template a tiny random model of that family, built as the test builds it."""
    if not family:
        return smollm_dir
    import tempfile

    sys.path.insert(0, str(REPO / "tests" / "templates"))
    from lf_tokenizers import tiny_family_lm

    folder = tempfile.mkdtemp(prefix=f"lf-api-{template}-")
    tiny_family_lm(template, smollm_dir, folder)
    return folder


def main(smollm_dir: str, out: Path) -> None:
    spec = json.loads((REPO / "tests/fixtures/llamafactory/api_requests.json").read_text(encoding="utf-8"))
    replies: dict = {}
    runs = [(t, False) for t in spec["templates"]] + [(t, True) for t in spec.get("family_templates", [])]
    for template, family in runs:
        port = free_port()
        proc = serve(model_for(template, smollm_dir, family), template, port)
        try:
            wait(f"http://127.0.0.1:{port}", proc)
            replies[template] = {}
            for key, body in spec["requests"].items():
                r = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=300)
                replies[template][key] = {"status": r.status_code, "body": r.json()}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fixed_date import ORACLE_DATE

    data = {"llamafactory": version("llamafactory"), "tool_prompt_date": ORACLE_DATE.strftime("%d %b %Y"),
            "replies": replies}
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(replies)} templates x {len(spec['requests'])} requests -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
