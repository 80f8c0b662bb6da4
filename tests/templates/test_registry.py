"""The registry: every family has a template file and real parsers; aliases, detection and the CLI listing."""

from __future__ import annotations

import pytest

from chatplex.cli.main import main
from chatplex.errors import ConfigError
from chatplex.templates import builtin_names, load_builtin, render_prompt, resolve_template
from chatplex.templates.reasoning import REASONING_PARSERS
from chatplex.templates.registry import ALIASES, FAMILIES
from chatplex.templates.tool_parsers import TOOL_PARSERS


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_family_loads_with_its_parsers(family):
    t = load_builtin(family.name)
    assert t.source and t.stop_words == family.stop_words
    assert t.tool_parser is None or t.tool_parser in TOOL_PARSERS
    assert t.reasoning_parser is None or t.reasoning_parser in REASONING_PARSERS


def test_aliases_resolve():
    assert load_builtin("llama3.3").name == "llama3.1"
    assert load_builtin("qwen2").name == "qwen2.5"
    assert load_builtin("mistral-nemo").tool_parser == "mistral"
    assert set(ALIASES.values()) <= set(builtin_names())
    with pytest.raises(ConfigError, match="not a template name"):
        load_builtin("nope")


def test_templates_without_a_reference(render_tokenizer):
    # No reference copy exists for these; the expected text is the family's published format.
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    render_tokenizer.bos_token, render_tokenizer.eos_token = "<s>", "</s>"
    assert render_prompt(render_tokenizer, load_builtin("phi3"), msgs) == "<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\n"
    assert render_prompt(render_tokenizer, load_builtin("qwen2.5"), msgs[1:]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(render_tokenizer, load_builtin("llama2"), msgs) == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]"


def test_tokenizer_template_parsers_are_detected(render_tokenizer, tmp_path):
    t = resolve_template(None, None, render_tokenizer)  # SmolLM2: plain ChatML, no tools, no thinking
    # it does not render tools, so it gets the generic (Hermes) tool prompt and parser: tests/templates/test_tool_prompt
    assert (t.name, t.source, t.tool_parser, t.reasoning_parser, t.tools) == ("tokenizer", None, "hermes", None, "generic")
    f = tmp_path / "qwen3.jinja"
    f.write_text(load_builtin("qwen3-hf").source)
    t = resolve_template(None, str(f), render_tokenizer)
    assert (t.tool_parser, t.reasoning_parser) == ("hermes", "think")
    for name in ("mistral-v0.3", "deepseek-v3", "deepseek3.1", "glm4.5", "qwen3-coder", "llama3.2", "phi4-mini"):
        assert resolve_template(None, load_builtin(name).source, render_tokenizer).tool_parser == load_builtin(name).tool_parser, name


def test_cli_lists_templates_with_stop_words(capsys):
    assert main(["templates"]) == 0
    out = capsys.readouterr().out
    assert "llama3.1" in out and "<|eot_id|>" in out and "llama3_json" in out and "hermes" in out
    assert "qwen3_nothink" in out and "LLaMA-Factory's formats (124" in out
