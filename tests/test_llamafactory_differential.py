"""chatplex's replies equal LLaMA-Factory's own ChatModel's, token for token (float32, greedy): on SmolLM2 under
every template whose tokens it has, and on tiny random models of the other text templates' families.

fixtures/llamafactory/chat_model_replies.json holds what LLaMA-Factory 0.9.5's ChatModel (Hugging Face backend)
answered in its own environment (`make lf-diff` renders it with oracles/llamafactory/run_chat_model.py, then runs
this file over every template): for each template whose tokens SmolLM2 has, each conversation of
conversations.json, and `get_scores` of a value-head model. Here chatplex answers the same requests through its
own engine. The suite checks a spread of the templates (each costs an engine start); CHATPLEX_LF_DIFF_ALL=1 (set
by `make lf-diff`) checks them all.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from chatplex import ChatModel

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llamafactory"
ORACLE = json.loads((FIXTURES / "chat_model_replies.json").read_text(encoding="utf-8"))
CONVERSATIONS = json.loads((FIXTURES / "conversations.json").read_text(encoding="utf-8"))["chat"]
SPREAD = ["smollm2", "qwen3", "qwen3_nothink", "chatml", "default", "alpaca", "vicuna", "empty"]
CHECKED = ORACLE["templates"] if os.environ.get("CHATPLEX_LF_DIFF_ALL") else [t for t in SPREAD if t in ORACLE["templates"]]

pytestmark = pytest.mark.slow


async def _answers(model: ChatModel) -> dict[str, dict]:
    async def one(conversation: dict) -> dict:
        try:
            (r,) = await model.achat(conversation["messages"], tools=conversation.get("tools"), do_sample=False,
                                     max_new_tokens=ORACLE["max_new_tokens"])
        except Exception as e:  # noqa: BLE001 - compared with the oracle's refusal below
            return {"error": f"{type(e).__name__}: {e}"}
        # The reply as LLaMA-Factory's ChatModel returns it: the generated ids decoded whole, with transformers'
        # clean-up of spaces before punctuation, as its engine decodes (chatplex's own response_text has tool calls
        # and thoughts split out, which LLaMA-Factory's ChatModel leaves in, and keeps the spaces the model wrote).
        tokenizer = model.engine.tokenizer  # (transformers 5.25's decode no longer takes the clean-up flag)
        text = tokenizer.clean_up_tokenization(tokenizer.decode(r.token_ids, skip_special_tokens=True))
        return {"text": text, "prompt_length": r.prompt_length, "finish_reason": r.finish_reason}

    keys = list(CONVERSATIONS)
    results = await asyncio.gather(*(one(CONVERSATIONS[k]) for k in keys))
    return dict(zip(keys, results, strict=True))



@pytest.fixture(autouse=True)
def _recorded_date(monkeypatch):
    """LLaMA-Factory's Llama 3 tool prompt states the date: the replies were recorded with this one."""
    from chatplex.templates.llamafactory import tool_formats

    monkeypatch.setattr(tool_formats, "today", lambda: ORACLE["tool_prompt_date"])

def _assert_replies_equal(model_dir: str, template: str, expected: dict[str, dict]) -> None:
    """chatplex's answers under `template` equal LLaMA-Factory's (a refusal where it refused)."""
    with ChatModel({"model_name_or_path": model_dir, "template": template, "infer_dtype": "float32"}) as model:
        got = asyncio.run(_answers(model))
    for key, want in expected.items():
        if "error" in want:
            assert "error" in got[key], (key, want["error"], got[key])
            continue
        assert got[key]["prompt_length"] == want["prompt_length"], key
        assert got[key]["text"] == want["text"], key


@pytest.mark.parametrize("template", CHECKED)
def test_replies_equal_llamafactory(template, smollm_dir):
    _assert_replies_equal(smollm_dir, template, ORACLE["replies"][template])


FAMILY_SPREAD = ["llama3", "gemma2", "glm4", "phi4_mini", "granite4", "minimax2"]
FAMILIES = ORACLE["family_templates"] if os.environ.get("CHATPLEX_LF_DIFF_ALL") else FAMILY_SPREAD


@pytest.mark.parametrize("template", FAMILIES)
def test_replies_on_its_family_model_equal_llamafactory(template, smollm_dir, tmp_path):
    """Templates whose tokens SmolLM2 lacks, each on a tiny random Llama with its family's tokenizer, built the
    same way in both environments (lf_tokenizers.tiny_family_lm)."""
    from tests.templates.lf_tokenizers import tiny_family_lm

    tiny_family_lm(template, smollm_dir, tmp_path)
    _assert_replies_equal(str(tmp_path), template, ORACLE["family_replies"][template])


def test_scores_equal_llamafactory(smollm_dir, tmp_path):
    for f in os.listdir(smollm_dir):
        os.symlink(os.path.join(smollm_dir, f), tmp_path / f)
    shutil.copy(FIXTURES / "value_head.safetensors", tmp_path)
    with ChatModel({"model_name_or_path": str(tmp_path), "stage": "rm", "infer_dtype": "float32"}) as model:
        scores = model.get_scores(ORACLE["score_texts"])
    assert scores == pytest.approx(ORACLE["scores"], abs=1e-4)
