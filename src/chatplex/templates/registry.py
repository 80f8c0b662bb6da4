"""Chatplex's Jinja built-ins: models' own chat templates, one row each with its stop words, aliases and parsers.

Their names are the ones LLaMA-Factory does not use (`template: qwen3` is LLaMA-Factory's Qwen3 format, the one a
fine-tune learnt; `qwen3-hf` is the template Qwen3 ships on the Hugging Face Hub): a version (`qwen2.5`,
`llama3.0`, `mistral-v0.3`, `glm4.5`) or `-hf` where no version tells them apart.

`builtin/<name>.jinja` holds the template. Stop words end a turn besides the tokenizer's EOS (a model run with a
template other than its tokenizer's may not have the right EOS configured). `tool_parser` and
`reasoning_parser` name the parsers in `tool_parsers/` and `reasoning.py` that read this family's replies.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    stop_words: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    description: str = ""


FAMILIES: tuple[Family, ...] = (
    Family("hermes", ("<|im_end|>",), tool_parser="hermes", description="ChatML with Hermes <tool_call> tools"),
    Family("llama3.0", ("<|eot_id|>", "<|eom_id|>"), description="Llama 3 (no tools)"),
    Family(
        "llama3.1",
        ("<|eot_id|>", "<|eom_id|>"),
        ("llama3.3", "llama3-json"),
        tool_parser="llama3_json",
        description="Llama 3.1/3.3 with JSON tool calls",
    ),
    Family(
        "llama3.2",
        ("<|eot_id|>", "<|eom_id|>"),
        ("llama3-pythonic",),
        tool_parser="pythonic",
        description="Llama 3.2 with pythonic tool calls",
    ),
    Family("llama4-hf", ("<|eot|>", "<|eom|>"), tool_parser="pythonic", description="Llama 4 with pythonic tool calls"),
    Family(
        "qwen2.5",
        ("<|im_end|>", "<|endoftext|>"),
        ("qwen2",),
        tool_parser="hermes",
        description="Qwen 2/2.5 (ChatML, <tool_call> tools)",
    ),
    Family(
        "qwen3-hf",
        ("<|im_end|>", "<|endoftext|>"),
        tool_parser="hermes",
        reasoning_parser="think",
        description="Qwen3 (thinking, <tool_call> tools)",
    ),
    Family(
        "qwen3-coder",
        ("<|im_end|>", "<|endoftext|>"),
        tool_parser="qwen3_coder",
        description="Qwen3-Coder (XML tool calls)",
    ),
    Family(
        "mistral-v0.3",
        ("</s>",),
        ("mistral-nemo",),
        tool_parser="mistral",
        description="Mistral v0.3 / Nemo ([INST], [TOOL_CALLS])",
    ),
    Family(
        "mistral-small",
        ("</s>",),
        ("mistral-small3", "mistral-small3.1"),
        tool_parser="mistral",
        description="Mistral Small 3/3.1 ([SYSTEM_PROMPT], [TOOL_CALLS])",
    ),
    Family("gemma2-hf", ("<end_of_turn>",), description="Gemma 2 (no system role)"),
    Family("gemma3-hf", ("<end_of_turn>",), tool_parser="pythonic", description="Gemma 3 with pythonic tool calls"),
    Family("phi3", ("<|end|>",), ("phi3.5",), description="Phi-3/3.5 (<|user|> ... <|end|>)"),
    Family("phi4-mini", ("<|end|>",), tool_parser="phi4_mini", description="Phi-4-mini (<|tool_call|> tools)"),
    Family(
        "deepseek-v3",
        ("<｜end▁of▁sentence｜>",),
        tool_parser="deepseek_v3",
        description="DeepSeek V3 (tool-call marker tokens)",
    ),
    Family(
        "deepseek-r1",
        ("<｜end▁of▁sentence｜>",),
        tool_parser="deepseek_v3",
        reasoning_parser="think",
        description="DeepSeek R1 (thinking, marker tool calls)",
    ),
    Family(
        "deepseek-r1-distill",
        ("<｜end▁of▁sentence｜>",),
        tool_parser="deepseek_v3",
        reasoning_parser="think",
        description="DeepSeek R1 distilled into Qwen/Llama",
    ),
    Family(
        "deepseek3.1",
        ("<｜end▁of▁sentence｜>",),
        ("deepseek-v3.1",),
        tool_parser="deepseek_v31",
        reasoning_parser="think",
        description="DeepSeek V3.1 (thinking switch, marker tool calls)",
    ),
    Family(
        "glm4.5",
        ("<|user|>", "<|observation|>", "<|endoftext|>"),
        ("glm4.6",),
        tool_parser="glm4",
        reasoning_parser="think",
        description="GLM-4.5/4.6 (thinking, XML-style tool calls)",
    ),
)

BY_NAME = {f.name: f for f in FAMILIES}
ALIASES = {alias: f.name for f in FAMILIES for alias in f.aliases}
