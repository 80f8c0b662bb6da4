"""Arguments from a dict, a YAML file or the command line, LLaMA-Factory style."""

from __future__ import annotations

import logging

import pytest

from chatplex.config import ConfigError, load_args, parse_argv


def test_dict_keys_split_into_model_and_generation(tmp_path):
    args = load_args({"infer_backend": "hf", "temperature": 0.3, "max_new_tokens": 64, "default_system": "Be brief."})
    assert args.model.infer_backend == "huggingface"
    assert args.model.default_system == "Be brief."
    assert args.generating.temperature == 0.3 and args.generating.max_new_tokens == 64


def test_llamafactory_yaml_with_training_keys_loads_with_a_warning(tmp_path, caplog):
    cfg = tmp_path / "infer.yaml"
    cfg.write_text("template: llama3\ninfer_backend: huggingface\nfinetuning_type: lora\ntrust_remote_code: true\n")
    with caplog.at_level(logging.WARNING):
        args = load_args(str(cfg))
    assert args.model.template == "llama3" and args.model.trust_remote_code is True
    assert "finetuning_type" in caplog.text


def test_yaml_path_then_key_value_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("temperature: 0.9\ntop_k: 10\n")
    raw = parse_argv([str(cfg), "temperature=0.1", "do_sample=false", "stop=[\"a\", \"b\"]"])
    args = load_args(raw)
    assert args.generating.temperature == 0.1 and args.generating.top_k == 10
    assert args.generating.do_sample is False and args.generating.stop == ["a", "b"]


def test_flags_from_the_command_line(monkeypatch):
    monkeypatch.setattr("sys.argv", ["prog", "--temperature", "0.2", "--max_new_tokens=7", "--trust-remote-code"])
    args = load_args(None)
    assert args.generating.temperature == 0.2 and args.generating.max_new_tokens == 7
    assert args.model.trust_remote_code is True


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"max_new_tokens": "many"}, "max_new_tokens: expected int"),
        ({"temperature": "hot"}, "temperature: expected float"),
        ({"trust_remote_code": "perhaps"}, "trust_remote_code: expected bool"),
        ({"device": "tpu"}, "device: 'tpu' is not valid; choose one of auto, cpu, cuda"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"template": "llama3", "chat_template": "x.jinja"}, "give one, not both"),
    ],
)
def test_bad_values_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        load_args(raw)


def test_media_policy_keys_are_checked():
    args = load_args({"media": {"max_images": 2, "allow_remote": False, "max_videos": 1}})
    assert args.model.media == {"max_images": 2, "allow_remote": False, "max_videos": 1}
    with pytest.raises(ConfigError, match=r"media.max_movies: unknown; valid keys: max_images"):
        load_args({"media": {"max_movies": 1}})
    with pytest.raises(ConfigError, match="max_images"):
        load_args({"media": {"max_images": -1}})


def test_missing_or_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_args(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_args(str(bad))
