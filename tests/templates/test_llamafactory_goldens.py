"""Every LLaMA-Factory template name renders the token ids LLaMA-Factory itself renders.

The goldens (tests/fixtures/llamafactory/goldens, one file per name) were rendered by LLaMA-Factory's own code in
its own environment (`make lf-goldens`, oracles/llamafactory/render_goldens.py): its API's split of each
conversation of conversations.json, its `get_template_and_fix_tokenizer`, then `encode_oneturn` with an empty reply
(the prompt its ChatModel generates from) and `encode_multiturn` (training pairs). Here chatplex does the same from
OpenAI-style messages, with the same family tokenizers (lf_tokenizers.py), and must give the same ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.templates.lf_tokenizers import build_tokenizer, special_ids

from chatplex.errors import InvalidRequestError
from chatplex.messages import normalize_messages, validate_tools
from chatplex.templates import llamafactory
from chatplex.templates.llamafactory import tool_formats
from chatplex.templates.llamafactory.conversation import to_turns

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "llamafactory"
GOLDENS = sorted((FIXTURES / "goldens").glob("*.json"))
CONVERSATIONS = json.loads((FIXTURES / "conversations.json").read_text(encoding="utf-8"))


def test_every_llamafactory_name_has_goldens() -> None:
    assert sorted(p.stem for p in GOLDENS) == llamafactory.names()
    assert len(GOLDENS) == 124  # LLaMA-Factory's registry at ff6d4d12: 0.9.5's 121 names and 3 newer


def _turns(conversation: dict, *, generation: bool, name: str):
    messages = normalize_messages(conversation["messages"], require_reply=generation)
    tools = validate_tools(conversation.get("tools"))
    return to_turns(messages, tools, template=name, add_generation_prompt=generation)


@pytest.mark.parametrize("golden_path", GOLDENS, ids=lambda p: p.stem)
def test_prompt_ids_equal_llamafactory(golden_path: Path, smollm_dir: str, monkeypatch) -> None:
    golden = json.loads(golden_path.read_text(encoding="utf-8"))
    name = golden["name"]
    monkeypatch.setattr(tool_formats, "today", lambda: golden["date"])
    checked = 0
    for thinking in sorted({c["enable_thinking"] for c in golden["chat"]}, reverse=True):
        tokenizer = build_tokenizer(golden["tokenizer"], smollm_dir)
        assert special_ids(tokenizer, golden["tokenizer"]) == golden["special_ids"]
        fmt = llamafactory.load(name).configured(enable_thinking=thinking)
        fmt.fix_tokenizer(tokenizer)
        if thinking:
            assert tokenizer.eos_token == golden["eos_token"]
            assert len(tokenizer) == golden["vocab_size"]
            assert fmt.stop_token_ids(tokenizer) == golden["stop_token_ids"]
        for case in (c for c in golden["chat"] if c["enable_thinking"] == thinking):
            conversation = CONVERSATIONS["chat"][case["conversation"]]
            turns, system, tools = _turns(conversation, generation=True, name=name)
            if "error" in case:
                with pytest.raises(InvalidRequestError):
                    fmt.prompt_ids(tokenizer, turns, system, tools)
            else:
                assert fmt.prompt_ids(tokenizer, turns, system, tools) == case["prompt_ids"], case["conversation"]
            checked += 1
        for case in (c for c in golden["multiturn"] if c["enable_thinking"] == thinking):
            conversation = CONVERSATIONS["multiturn"][case["conversation"]]
            turns, system, tools = _turns(conversation, generation=False, name=name)
            pairs = fmt.encode_multiturn(tokenizer, turns, system, tools)
            assert [list(map(list, p)) for p in pairs] == case["pairs"], case["conversation"]
            checked += 1
    assert checked >= 9
