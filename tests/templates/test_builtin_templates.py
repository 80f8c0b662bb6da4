"""Each built-in template renders exactly what its family's reference template renders (tests/fixtures/chat_templates),
for conversations with and without tools, tool calls (arguments as objects, as normalize_messages leaves them) and
tool results. Where the reference cannot render a conversation, ours must refuse it too.

Both sides render through the tokenizer's `apply_chat_template` with the family's bos/eos tokens set.
"""

from __future__ import annotations

import json

import pytest

from chatplex.errors import InvalidRequestError
from chatplex.messages import normalize_messages
from chatplex.templates import ChatTemplate, load_builtin, render_prompt

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city name"},
            "days": {"type": "integer", "description": "Days of forecast"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Get the current time.",
        "parameters": {"type": "object", "properties": {}}}},
]
CALL_W = {"id": "call_abc123xyz", "type": "function",
          "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}}
CALL_T = {"id": "call_def456uvw", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
RESULT_W = {"role": "tool", "tool_call_id": "call_abc123xyz", "name": "get_weather", "content": '{"temp": 21}'}
RESULT_T = {"role": "tool", "tool_call_id": "call_def456uvw", "name": "get_time", "content": "12:00"}
SYS = {"role": "system", "content": "You are terse."}

# name -> (messages, tools, add_generation_prompt, template kwargs)
CONVERSATIONS = {
    "user": ([{"role": "user", "content": "Hi there"}], None, True, {}),
    "system": ([SYS, {"role": "user", "content": "Hi"}], None, True, {}),
    "multi_turn": ([SYS, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "And 3+3?"}], None, True, {}),
    "no_generation_prompt": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                             None, False, {}),
    "tools": ([SYS, {"role": "user", "content": "Weather in Paris?"}], TOOLS, True, {}),
    "tools_no_system": ([{"role": "user", "content": "Weather in Paris?"}], TOOLS, True, {}),
    "tool_call": ([SYS, {"role": "user", "content": "Weather in Paris?"},
                   {"role": "assistant", "content": None, "tool_calls": [CALL_W]}, RESULT_W], TOOLS, True, {}),
    "parallel_calls": ([{"role": "user", "content": "Weather and time?"},
                        {"role": "assistant", "content": "Checking both.", "tool_calls": [CALL_W, CALL_T]},
                        RESULT_W, RESULT_T, {"role": "assistant", "content": "21C at noon."},
                        {"role": "user", "content": "Thanks!"}], TOOLS, True, {}),
    "thinking_history": ([{"role": "user", "content": "Capital of France?"},
                          {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\nParis."},
                          {"role": "user", "content": "And Italy?"}], None, True, {}),
    "thinking_off": ([{"role": "user", "content": "Hi"}], None, True, {"enable_thinking": False}),
}

# built-in -> [(reference file, bos, eos, references take arguments as JSON strings, fixes to the reference)]
LLAMA3 = ("<|begin_of_text|>", "<|eot_id|>")
DS = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
REFERENCES = {
    "hermes": [("hermes-tools.jinja", "<|begin_of_text|>", "<|im_end|>", False, ())],
    # vLLM's example Llama 3 template departs from Meta's own (Meta-Llama-3-*-Instruct tokenizer_config.json, which
    # LLaMA-Factory's llama3 follows): one newline after each header instead of two, untrimmed content, no
    # <|eot_id|> after a final assistant turn, and newlines between its tags. A model fine-tuned on Meta's format
    # is one newline off with it, so `llama3.0` renders Meta's format: the fixes turn the reference into that.
    "llama3.0": [("llama-3.jinja", *LLAMA3, False, (
        ("{{'<|begin_of_text|>'}}\n{% for", "{{'<|begin_of_text|>'}}{% for"),
        ("'<|end_header_id|>\\n' + message['content']}}", "'<|end_header_id|>\\n\\n' + message['content'] | trim}}"),
        ("{% if (loop.last and add_generation_prompt) or not loop.last %}{{'<|eot_id|>'}}{% endif %}", "{{'<|eot_id|>'}}"),
        ("{% endfor %}\n{% if", "{% endfor %}{% if"),
        ("'<|start_header_id|>assistant<|end_header_id|>\\n' }}", "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"),
    ))],
    "llama3.1": [("llama-3.1-json-tools.jinja", *LLAMA3, False, ())],
    "llama3.2": [("llama-3.2-pythonic-tools.jinja", *LLAMA3, False, ())],
    "llama4-hf": [("llama-4-pythonic-tools.jinja", "<|begin_of_text|>", "<|eot|>", False, ())],
    "qwen3-hf": [("qwen3-0.6b.jinja", "<|endoftext|>", "<|im_end|>", False, ())],
    "qwen3-coder": [("qwen3-coder-tools.jinja", "<|endoftext|>", "<|im_end|>", False, ())],
    "mistral-v0.3": [("mistral-parallel-tools.jinja", "<s>", "</s>", False, ())],
    "mistral-small": [
        # This copy went through a conversion that turned each "\\n" in the default system prompt into a
        # backslash-newline, which Jinja reads as a line continuation (no newline at all); the model's own
        # template, like mistral-3-tools below, has the newlines.
        ("mistral-small-3.1.jinja", "<s>", "</s>", False, (("\\\n", "\\n"),)),
        # This copy checks role alternation with an undefined `i`, so it fails on every conversation; it means
        # loop.index0, as mistral-small-3.1 writes it.
        ("mistral-3-tools.jinja", "<s>", "</s>", False, (("(i % 2 == 0)", "(loop.index0 % 2 == 0)"),)),
    ],
    # Gemma 2 has no system role: the reference refuses system messages, and so do we.
    "gemma2-hf": [("gemma-2-2b-it.jinja", "<bos>", "<eos>", False, ())],
    # The reference separates named arguments with a `first` flag set inside the loop, but a Jinja `set` in a loop
    # does not outlive its iteration, so it writes f(a=1b=2). It means comma-separated arguments: loop.first.
    "gemma3-hf": [("gemma-3-pythonic-tools.jinja", "<bos>", "<eos>", False,
                (("{%- if not first %}, {% endif -%}", "{%- if not loop.first %}, {% endif -%}"),))],
    # Written for renderers that leave `tools` undefined when there are none; transformers passes tools=None,
    # which `tools is defined` lets through to a failing loop. It means "when there are tools".
    "phi4-mini": [("phi-4-mini-llamacpp.jinja", "<|endoftext|>", "<|endoftext|>", False, (("tools is defined", "tools"),))],
    "deepseek-v3": [("deepseek-v3-tools.jinja", *DS, False, ())],
    "deepseek-r1": [("deepseek-r1-tools.jinja", *DS, False, ())],
    "deepseek-r1-distill": [("deepseek-r1-distill-qwen.jinja", *DS, True, ())],
    "deepseek3.1": [("deepseek-v3.1.jinja", *DS, True, ())],
    "glm4.5": [("glm-4.6.jinja", "<sop>", "<|endoftext|>", False, ())],
}

PAIRS = [(name, ref, conv) for name, refs in REFERENCES.items() for ref in refs for conv in CONVERSATIONS]


def _render(tokenizer, source, bos, eos, messages, tools, add_generation_prompt, kwargs):
    tokenizer.bos_token, tokenizer.eos_token = bos, eos
    template = ChatTemplate("under-test", source)
    return render_prompt(tokenizer, template, messages, tools=tools, add_generation_prompt=add_generation_prompt,
                         template_kwargs=kwargs)


def _string_arguments(messages):
    """The reference renders OpenAI's JSON-string arguments as they come: give it those."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                     for c in m["tool_calls"]]
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


@pytest.mark.parametrize("name,ref,conv", PAIRS, ids=[f"{n}-{r[0]}-{c}" for n, r, c in PAIRS])
def test_matches_reference(render_tokenizer, reference_dir, name, ref, conv):
    file, bos, eos, string_args, fixes = ref
    raw, tools, gen, kwargs = CONVERSATIONS[conv]
    messages = normalize_messages(raw, require_reply=gen)
    source = (reference_dir / file).read_text(encoding="utf-8")
    for old, new in fixes:
        assert old in source
        source = source.replace(old, new)
    ref_messages = _string_arguments(messages) if string_args else messages
    try:
        expected = _render(render_tokenizer, source, bos, eos, ref_messages, tools, gen, kwargs)
    except InvalidRequestError:
        with pytest.raises(InvalidRequestError):
            _render(render_tokenizer, load_builtin(name).source, bos, eos, messages, tools, gen, kwargs)
        return
    assert _render(render_tokenizer, load_builtin(name).source, bos, eos, messages, tools, gen, kwargs) == expected


@pytest.mark.parametrize("name,ref", [(n, r) for n, refs in REFERENCES.items() for r in refs])
def test_reference_renders_most_conversations(render_tokenizer, reference_dir, name, ref):
    # Guards the test above: a reference that failed everywhere would make "both refuse" pass vacuously.
    file, bos, eos, string_args, fixes = ref
    source = (reference_dir / file).read_text(encoding="utf-8")
    for old, new in fixes:
        source = source.replace(old, new)
    rendered = 0
    for raw, tools, gen, kwargs in CONVERSATIONS.values():
        messages = normalize_messages(raw, require_reply=gen)
        try:
            _render(render_tokenizer, source, bos, eos, _string_arguments(messages) if string_args else messages,
                    tools, gen, kwargs)
            rendered += 1
        except InvalidRequestError:
            pass
    assert rendered >= 5, f"{file} rendered only {rendered} of {len(CONVERSATIONS)} conversations"
