"""Render the goldens for chatplex's LLaMA-Factory formats with LLaMA-Factory's own code.

Runs in LLaMA-Factory's environment (`make lf-goldens`). For every registered template name, with the family
tokenizer of tests/templates/lf_tokenizers.py: LLaMA-Factory's API turns each conversation of
tests/fixtures/llamafactory/conversations.json into its turns, system and tools (`api.chat._process_request`);
`get_template_and_fix_tokenizer` prepares template and tokenizer as its ChatModel does; `encode_oneturn` with an
empty reply appended gives the prompt ids its ChatModel generates from (hf_engine's `_process_args`), and
`encode_multiturn` the training pairs. Reasoning formats are rendered with thinking on and off. Output: one JSON
file per name in tests/fixtures/llamafactory/goldens/.

One deliberate difference from LLaMA-Factory's API: it passes tool-call arguments on as the JSON string the client
sent, which its function formatter then encodes a second time; the turns here carry the arguments object, as
LLaMA-Factory's training data does (what a fine-tune learnt), and chatplex renders that.
"""

from __future__ import annotations

import copy
import json
import sys
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "templates"))

from lf_tokenizers import build_tokenizer, special_ids, tokenizer_spec  # noqa: E402
from llamafactory.api.chat import _process_request  # noqa: E402
from llamafactory.api.protocol import ChatCompletionRequest  # noqa: E402
from llamafactory.data import template as lf_template  # noqa: E402
from llamafactory.data import tool_utils  # noqa: E402
from llamafactory.hparams import DataArguments  # noqa: E402

FIXED_DATE = datetime(2026, 1, 15)


class _FixedDatetime(datetime):
    @classmethod
    def now(cls, tz=None):  # the Llama 3 tool prompt states today's date
        return FIXED_DATE


def lf_turns(conversation: dict) -> tuple[list[dict], str | None, str | None]:
    request = ChatCompletionRequest(model="test", messages=copy.deepcopy(conversation["messages"]),
                                    tools=conversation.get("tools"))
    turns, system, tools, *_ = _process_request(request)
    for turn in turns:
        if turn["role"] == "function":
            calls = json.loads(turn["content"])
            turn["content"] = json.dumps([{"name": c["name"], "arguments": json.loads(c["arguments"])} for c in calls],
                                         ensure_ascii=False)
    return turns, system, tools


def render(name: str, fmt: dict, conversations: dict, smollm_dir: str) -> dict:
    spec = tokenizer_spec(name, fmt)
    out: dict = {"name": name, "tokenizer": spec, "chat": [], "multiturn": []}
    variants = [True, False] if fmt["encoding"].startswith("reasoning") else [True]
    for enable_thinking in variants:
        tokenizer = build_tokenizer(spec, smollm_dir)
        ids_before = special_ids(tokenizer, spec)
        template = lf_template.get_template_and_fix_tokenizer(
            tokenizer, DataArguments(template=name, enable_thinking=enable_thinking))
        if enable_thinking:
            out["special_ids"] = ids_before
            out["eos_token"] = tokenizer.eos_token
            out["vocab_size"] = len(tokenizer)
            out["stop_token_ids"] = sorted(template.get_stop_token_ids(tokenizer))
        for key, conversation in conversations["chat"].items():
            case: dict = {"conversation": key, "enable_thinking": enable_thinking}
            try:
                turns, system, tools = lf_turns(conversation)
                paired = turns + [{"role": "assistant", "content": ""}]
                prompt_ids, _ = template.encode_oneturn(tokenizer, paired, system, tools)
                case["prompt_ids"] = prompt_ids
            except Exception as e:  # the format refuses the conversation (GLM-4: one call per turn)
                case["error"] = f"{type(e).__name__}: {e}"
            out["chat"].append(case)
        for key, conversation in conversations["multiturn"].items():
            case = {"conversation": key, "enable_thinking": enable_thinking}
            turns, system, tools = lf_turns({"messages": conversation["messages"][:-1]})
            turns.append({"role": "assistant", "content": conversation["messages"][-1]["content"]})
            case["pairs"] = [list(map(list, pair)) for pair in template.encode_multiturn(tokenizer, turns, system, tools)]
            out["multiturn"].append(case)
    return out


def main(smollm_dir: str, out_dir: Path, source: str | None = None) -> None:
    tool_utils.datetime = _FixedDatetime
    conversations = json.loads((REPO / "tests/fixtures/llamafactory/conversations.json").read_text(encoding="utf-8"))
    formats = json.loads((REPO / "src/chatplex/templates/llamafactory/formats.json").read_text(encoding="utf-8"))
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = 0
    for name in sorted(lf_template.TEMPLATES):
        golden = render(name, formats["templates"][name], conversations, smollm_dir)
        golden["llamafactory"] = source or version("llamafactory")
        golden["date"] = FIXED_DATE.strftime("%d %b %Y")
        errors += sum("error" in c for c in golden["chat"])
        (out_dir / f"{name}.json").write_text(json.dumps(golden, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(lf_template.TEMPLATES)} templates -> {out_dir} ({errors} conversations refused by their format)")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
