"""Llama 3.1/3.3 JSON calls: the whole reply is `{"name": ..., "parameters": {...}}` (several joined by `;`, or as one
JSON list as LLaMA-Factory writes them), optionally after `<|python_tag|>`. Anything else, including JSON that is
not a call, is content."""

from __future__ import annotations

import json

from chatplex.templates.tool_parsers.base import Block, ToolParser, all_parsed, as_call

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonParser(ToolParser):
    name = "llama3_json"
    start_markers = ("{", "[", PYTHON_TAG)  # "[": several calls as one JSON list, as LLaMA-Factory writes them
    anchored = True

    def read_block(self, text: str, final: bool) -> Block | None:
        if not final:
            return None  # a reply that starts like JSON is only known to be a call once it is complete
        rest = text.strip()
        if rest.startswith(PYTHON_TAG):
            rest = rest[len(PYTHON_TAG) :].lstrip()
        decoder = json.JSONDecoder()
        if rest.startswith("["):
            try:
                items, end = decoder.raw_decode(rest)
            except json.JSONDecodeError:
                return Block(len(text), None)
            calls_in_list = [as_call(obj) for obj in items] if isinstance(items, list) and items else [None]
            if rest[end:].strip() or None in calls_in_list:
                return Block(len(text), None)
            return Block(len(text), all_parsed(calls_in_list))
        calls = []
        while rest:
            try:
                obj, end = decoder.raw_decode(rest)
            except json.JSONDecodeError:
                return Block(len(text), None)
            call = as_call(obj)
            if call is None:
                return Block(len(text), None)
            calls.append(call)
            rest = rest[end:].lstrip().removeprefix(";").lstrip()
        return Block(len(text), calls or None)
