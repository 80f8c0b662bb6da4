"""Tools on templates that do not render them: found at load by a probe render, given chatplex's generic tool prompt
(Hermes format) so the model sees them, and said so in the template's `tools`; `generic_tool_prompt: false` keeps
the template as it is. Rendered with SmolLM2's real tokenizer and real reference templates."""

from __future__ import annotations

import json
import logging

import pytest

from chatplex.output_parsing import tool_parser_name
from chatplex.templates import render_prompt, resolve_template
from chatplex.templates.tool_parsers import get_tool_parser
from tests.templates.conftest import REFERENCE_DIR

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def test_smollm2s_own_template_gets_the_generic_prompt(smollm_tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        template = resolve_template(None, None, smollm_tokenizer)
    assert template.tools == "generic" and template.tool_parser == "hermes"
    assert "does not render tools" in caplog.text
    bare = render_prompt(smollm_tokenizer, template, ASK)
    with_tools = render_prompt(smollm_tokenizer, template, ASK, tools=[WEATHER])
    assert "get_weather" not in bare
    assert json.dumps(WEATHER) in with_tools and "<tool_call>" in with_tools
    # the tools ride in the system turn the template writes, before the user's question
    assert with_tools.index("get_weather") < with_tools.index("Weather in Paris?")
    assert with_tools.count("<|im_start|>system") == 1


def test_a_template_that_renders_tools_is_left_alone(smollm_tokenizer):
    source = str(REFERENCE_DIR / "hermes-tools.jinja")
    template = resolve_template(None, source, smollm_tokenizer)
    assert template.tools == "template"
    text = render_prompt(smollm_tokenizer, template, ASK, tools=[WEATHER])
    assert "get_weather" in text and "# Tools\n\nYou can call functions" not in text


def test_the_flag_turns_it_off(smollm_tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        template = resolve_template(None, None, smollm_tokenizer, generic_tool_prompt=False)
    assert template.tools == "ignored" and "generic_tool_prompt is off" in caplog.text
    assert "get_weather" not in render_prompt(smollm_tokenizer, template, ASK, tools=[WEATHER])


def test_a_tool_round_trip_reads_as_one_protocol(smollm_tokenizer):
    template = resolve_template(None, None, smollm_tokenizer)
    calls = [{"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
             {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]
    messages = [
        {"role": "system", "content": "Be brief."}, *ASK,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "a", "content": "18 C"},
        {"role": "tool", "tool_call_id": "b", "content": "24 C"},
    ]
    text = render_prompt(smollm_tokenizer, template, messages, tools=[WEATHER])
    assert "Be brief.\n\n# Tools" in text  # the caller's system message keeps its place, the tools follow it
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>' in text
    assert "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n24 C\n</tool_response>" in text
    assert "<|im_start|>tool" not in text


def test_the_prompts_call_format_is_what_the_parser_reads(smollm_tokenizer):
    """A reply written the way the generic prompt asks is parsed as a tool call by the template's parser."""
    template = resolve_template(None, None, smollm_tokenizer)
    parser = get_tool_parser(tool_parser_name(template, [WEATHER]), tools=[WEATHER])
    reply = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    calls = parser.parse(reply).tool_calls
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]


@pytest.mark.parametrize("name", ["qwen3-0.6b.jinja", "llama-3.1-json-tools.jinja", "mistral-3-tools.jinja"])
def test_reference_tool_templates_are_detected_as_rendering_tools(smollm_tokenizer, name):
    assert resolve_template(None, str(REFERENCE_DIR / name), smollm_tokenizer).tools == "template"


def test_a_family_with_its_own_call_format_is_not_taught_hermes(smollm_tokenizer):
    """DeepSeek-V3.1's template leaves tools to the system message; its replies are read by its own parser."""
    from chatplex.templates import load_builtin

    template = resolve_template(None, load_builtin("deepseek3.1").source, smollm_tokenizer)
    assert (template.tools, template.tool_parser) == ("ignored", "deepseek_v31")
