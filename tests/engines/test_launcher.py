"""Launched SGLang / KTransformers servers, against a stand-in server process (SGLang cannot be installed here):
flag mapping, slow start, crash during start, a start that never gets healthy, and stopping with the model."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import httpx
import pytest

from chatplex import ChatModel
from chatplex.config import load_args
from chatplex.engines.launcher import LAUNCH_COMMAND_ENV, KTransformersEngine, SGLangEngine, flags_from_dict, sglang_flags
from chatplex.errors import ConfigError, EngineError

STAND_IN = [sys.executable, str(Path(__file__).parent / "fixtures" / "fake_sglang.py")]


def test_flags_from_dict():
    flags = flags_from_dict({"max_running_requests": 8, "enable_metrics": True, "disable_radix_cache": False,
                             "lora_paths": ["a=/x", "b=/y"], "served_model_name": None})
    assert flags == ["--max-running-requests", "8", "--enable-metrics", "--lora-paths", "a=/x", "b=/y"]


def test_sglang_flag_mapping(tmp_path):
    args = load_args({"infer_backend": "sglang", "model_name_or_path": str(tmp_path), "sglang_tp_size": 2,
                      "sglang_maxlen": 2048, "sglang_mem_fraction": 0.5, "infer_dtype": "bfloat16",
                      "trust_remote_code": True, "sglang_config": {"max_running_requests": 4}})
    flags = sglang_flags(args, 1234)
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert pairs["--model-path"] == str(tmp_path) and pairs["--port"] == "1234" and pairs["--host"] == "127.0.0.1"
    assert (pairs["--tp-size"], pairs["--context-length"], pairs["--mem-fraction-static"]) == ("2", "2048", "0.5")
    assert pairs["--dtype"] == "bfloat16"
    assert "--trust-remote-code" in flags and flags[-2:] == ["--max-running-requests", "4"]


def test_ktransformers_needs_cpu_weights(tmp_path):
    args = load_args({"infer_backend": "ktransformers", "model_name_or_path": str(tmp_path)})
    with pytest.raises(ConfigError) as e:
        KTransformersEngine(args, launch_command=STAND_IN)
    assert "kt_weight_path" in e.value.message


def test_ktransformers_flags(tmp_path):
    args = load_args({"infer_backend": "ktransformers", "model_name_or_path": str(tmp_path),
                      "sglang_config": {"kt_weight_path": "/w", "kt_method": "AMXINT4", "kt_num_gpu_experts": 8}})
    engine = KTransformersEngine(args, launch_command=STAND_IN)
    cmd = engine.command
    assert cmd[: len(STAND_IN)] == STAND_IN
    for flag, value in (("--kt-weight-path", "/w"), ("--kt-method", "AMXINT4"), ("--kt-num-gpu-experts", "8")):
        assert cmd[cmd.index(flag) + 1] == value
    assert int(cmd[cmd.index("--kt-cpuinfer") + 1]) >= 1


def test_launch_serve_and_stop(tiny_model_dir, tmp_path, monkeypatch):
    """The whole path: ChatModel starts the (stand-in) server, waits through a slow start, chats, stops it."""
    argv_file = tmp_path / "argv.json"
    monkeypatch.setenv(LAUNCH_COMMAND_ENV, shlex.join(STAND_IN))
    monkeypatch.setenv("FAKE_SGLANG_ARGV", str(argv_file))
    monkeypatch.setenv("FAKE_SGLANG_DELAY", "2")
    model = ChatModel({"infer_backend": "sglang", "model_name_or_path": tiny_model_dir("llama"),
                       "infer_dtype": "float32", "sglang_maxlen": 512, "sglang_tp_size": 1})
    engine = model.engine
    try:
        reply = model.chat([{"role": "user", "content": "Hi"}], do_sample=False, max_new_tokens=5, ignore_eos=True)[0]
        assert reply.response_length == 5 and reply.finish_reason == "length"
        argv = json.loads(argv_file.read_text())
        assert argv[argv.index("--context-length") + 1] == "512"
        assert argv[argv.index("--model-path") + 1] == tiny_model_dir("llama")
        proc, url = engine.server.proc, engine.server.url
    finally:
        model.close()
    assert proc.poll() is not None  # stopped with the model
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)


async def test_crash_during_start_reports_the_log(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("FAKE_SGLANG_MODE", "crash")
    engine = SGLangEngine(load_args({"infer_backend": "sglang", "model_name_or_path": tiny_model_dir("llama")}),
                          launch_command=STAND_IN, launch_timeout=60)
    with pytest.raises(EngineError) as e:
        await engine.start()
    assert "exited with code 1" in e.value.message
    assert "stand-in crash during start" in e.value.message


async def test_start_timeout_kills_a_stuck_server(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("FAKE_SGLANG_MODE", "hang")
    engine = SGLangEngine(load_args({"infer_backend": "sglang", "model_name_or_path": tiny_model_dir("llama")}),
                          launch_command=STAND_IN, launch_timeout=3)
    engine.stop_grace = 1.0
    server_box = {}
    original = engine.close

    async def spy_close() -> None:
        server_box["proc"] = engine.server.proc if engine.server else None
        await original()

    engine.close = spy_close  # type: ignore[method-assign]
    with pytest.raises(EngineError) as e:
        await engine.start()
    assert "not healthy after 3 s" in e.value.message and "initialising forever" in e.value.message
    proc = server_box["proc"]
    assert proc is not None and proc.poll() is not None
    assert proc.returncode == -9  # it ignored SIGTERM, so it got SIGKILL
