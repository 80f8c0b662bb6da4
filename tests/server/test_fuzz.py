"""Schemathesis fuzzes every operation of the server's own OpenAPI schema: no 500s, no hangs.

Runs against a tiny random-weight model with a 64-token context, so any generated request stays cheap.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import running_server


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("fuzz-server") / "server.log"
    with running_server(["--model", tiny_model_dir, "--infer-dtype", "float32", "--max-model-len", "64"], log) as srv:
        yield srv


def test_schemathesis_finds_no_server_errors(fuzz_server, tmp_path):
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or pytest.skip("pip install schemathesis")
    cmd = [
        cli, "run", f"{fuzz_server.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25",
        "--request-timeout", "60", "--workers", "1", "--seed", "1", "--phases", "examples,fuzzing",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:] + fuzz_server.log()
    assert fuzz_server.proc.poll() is None  # still serving
