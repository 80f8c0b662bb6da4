"""Readers for the tool formats LLaMA-Factory teaches that no model family's parser here reads (its `tool_format`s
glm4, minimax1, minimax2, seed_oss, lfm2 and gemma4), written from the calls its function formatters write
(chatplex.templates.llamafactory.tool_formats) so that a model fine-tuned on them is read back.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from chatplex.templates.tool_parsers.base import Block, ToolParser, parameter_types, typed_value


class ChatGlm3Parser(ToolParser):
    """GLM-4 / ChatGLM3 as LLaMA-Factory writes them: the whole reply is `NAME\\n{json arguments}`."""

    name = "chatglm"
    start_markers = ("",)
    anchored = True

    def read_block(self, text: str, final: bool) -> Block | None:
        head, newline, rest = text.lstrip().partition("\n")
        could_be_call = _NAME.fullmatch(head) is not None and (not newline or rest.lstrip()[:1] in ("", "{"))
        if not could_be_call:
            return Block(len(text), None)  # an answer: it streams on as text
        if not final:
            return None  # a call is only known once the reply is complete
        try:
            args = json.loads(rest.strip())
        except json.JSONDecodeError:
            return Block(len(text), None)
        return Block(len(text), [(head, args)] if isinstance(args, dict) else None)


_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class MiniMax1Parser(ToolParser):
    """MiniMax-M1: `<tool_calls>` then one `{"name", "arguments"}` JSON object per line, then `</tool_calls>`."""

    name = "minimax1"
    start_markers = ("<tool_calls>",)
    end_marker = "</tool_calls>"

    def read_block(self, text: str, final: bool) -> Block | None:
        block = self.delimited(text)
        if block is None:
            return None
        stop, inner = block
        calls = []
        for line in filter(None, (line.strip() for line in inner.splitlines())):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                return Block(stop, None)
            if (
                not isinstance(obj, dict)
                or not isinstance(obj.get("name"), str)
                or not isinstance(obj.get("arguments"), dict)
            ):
                return Block(stop, None)
            calls.append((obj["name"], obj["arguments"]))
        return Block(stop, calls or None)


_INVOKE = re.compile(r'\s*<invoke name="([^"]+)">(.*?)</invoke>\s*', re.DOTALL)
_NAMED_PARAM = re.compile(r'<parameter name="([^"]+)">(.*?)</parameter>', re.DOTALL)


class MiniMax2Parser(ToolParser):
    """MiniMax-M2: `<invoke name="N"><parameter name="K">V</parameter>...</invoke>`, each call its own block,
    optionally inside `<minimax:tool_call>...</minimax:tool_call>` (LLaMA-Factory writes the invokes bare)."""

    name = "minimax2"
    start_markers = ("<minimax:tool_call>", "<invoke name=")

    def read_block(self, text: str, final: bool) -> Block | None:
        wrapped = text.startswith("<minimax:tool_call>")
        end_tag = "</minimax:tool_call>" if wrapped else "</invoke>"
        end = text.find(end_tag)
        if end < 0:
            return Block(len(text), None) if final else None
        stop = end + len(end_tag)
        inner = text[len("<minimax:tool_call>") : end] if wrapped else text[:stop]
        calls = []
        pos = 0
        for match in _INVOKE.finditer(inner):
            if inner[pos : match.start()].strip():
                return Block(stop, None)
            name, body = match.group(1), match.group(2)
            types = parameter_types(self.tools, name)
            calls.append((name, {k: typed_value(v.strip(), types.get(k)) for k, v in _NAMED_PARAM.findall(body)}))
            pos = match.end()
        return Block(stop, calls if calls and not inner[pos:].strip() else None)


# LLaMA-Factory writes no ">" after the function's name; Seed-OSS's own template does.
_SEED_FUNCTION = re.compile(r"\s*<function=([^>\s<]+)>?(.*?)</function>\s*", re.DOTALL)
_SEED_PARAM = re.compile(r"<parameter=([^>]+)>(.*?)</parameter>", re.DOTALL)


class SeedOssParser(ToolParser):
    """Seed-OSS: `<seed:tool_call>\\n<function=N>\\n<parameter=K>V</parameter>\\n</function>\\n</seed:tool_call>`."""

    name = "seed_oss"
    start_markers = ("<seed:tool_call>",)
    end_marker = "</seed:tool_call>"

    def read_block(self, text: str, final: bool) -> Block | None:
        block = self.delimited(text)
        if block is None:
            return None
        stop, inner = block
        match = _SEED_FUNCTION.fullmatch(inner)
        if not match:
            return Block(stop, None)
        name, body = match.group(1), match.group(2)
        types = parameter_types(self.tools, name)
        args = {k.strip(): typed_value(v, types.get(k.strip())) for k, v in _SEED_PARAM.findall(body)}
        return Block(stop, None if _SEED_PARAM.sub("", body).strip() else [(name, args)])


def _literal(node: ast.AST) -> Any:
    """A Python literal, with JSON's true/false/null too (LFM2 writes non-string values as JSON)."""
    if isinstance(node, ast.Name) and node.id in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[node.id]
    return ast.literal_eval(node)


class Lfm2Parser(ToolParser):
    """LFM2: `<|tool_call_start|>[name(key="value", n=1), ...]<|tool_call_end|>`, Python call syntax."""

    name = "lfm2"
    special_markers = True
    start_markers = ("<|tool_call_start|>",)
    end_marker = "<|tool_call_end|>"

    def read_block(self, text: str, final: bool) -> Block | None:
        block = self.delimited(text)
        if block is None:
            return None
        stop, inner = block
        try:
            tree = ast.parse(inner.strip(), mode="eval").body
            nodes = tree.elts if isinstance(tree, ast.List) else [tree]
            calls = []
            for node in nodes:
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
                    return Block(stop, None)
                calls.append((node.func.id, {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}))
        except (SyntaxError, ValueError):
            return Block(stop, None)
        return Block(stop, calls or None)


_GEMMA_STRING = re.compile(r'<\|"\|>(.*?)<\|"\|>', re.DOTALL)
_GEMMA_KEY = re.compile(r"(^|[{\s,\[])([A-Za-z_][A-Za-z0-9_]*)(\s*:)")


class Gemma4Parser(ToolParser):
    """Gemma 4: `<|tool_call>call:NAME{key:value,...}<tool_call|>`, strings between `<|"|>` quotes, keys bare;
    LLaMA-Factory's template wraps a turn's calls in `<|tool>...<tool|>`."""

    name = "gemma4"
    special_markers = True
    start_markers = ("<|tool><|tool_call>", "<|tool_call>")
    end_marker = "<tool_call|>"

    def read_block(self, text: str, final: bool) -> Block | None:
        opened = "<|tool>" if text.startswith("<|tool>") else ""
        end = text.find(self.end_marker)
        if end < 0:
            return Block(len(text), None) if final else None
        stop = end + len(self.end_marker)
        rest = text[stop:]  # the wrapper's close follows the last call of the turn
        if rest.startswith("<tool|>"):
            stop += len("<tool|>")
        elif not final and "<tool|>".startswith(rest):
            return None
        inner = text[len(opened) + len("<|tool_call>") : end]
        match = re.fullmatch(r"call:([^{\s]+)\{(.*)\}", inner.strip(), re.DOTALL)
        if not match:
            return Block(stop, None)
        strings: list[str] = []

        def hold(m: re.Match[str]) -> str:  # quoted strings out of the way while keys get their quotes
            strings.append(m.group(1))
            return f"\x00{len(strings) - 1}\x00"

        body = _GEMMA_STRING.sub(hold, "{" + match.group(2) + "}")
        body = _GEMMA_KEY.sub(r'\1"\2"\3', body)
        body = re.sub(r"\x00(\d+)\x00", lambda m: json.dumps(strings[int(m.group(1))], ensure_ascii=False), body)
        try:
            args = json.loads(body)
        except json.JSONDecodeError:
            return Block(stop, None)
        return Block(stop, [(match.group(1), args)] if isinstance(args, dict) else None)
