"""chatplex serve --api-mode llamafactory answers LLaMA-Factory's own API server's requests as it does.

fixtures/llamafactory/api_replies.json holds the responses of `llamafactory-cli api` (LLaMA-Factory 0.9.5, SmolLM2,
or for its family templates a tiny random model of the family, float32) to the requests of api_requests.json (in
the shape of its scripts/api_example: model "test", tools, greedy), rendered in its own environment by
`make lf-diff` (oracles/llamafactory/run_api_server.py). Here the same bodies go to chatplex's server over HTTP:
the same replies, finish reasons and token counts.

Its server answers `toolcall_round2` with a 500 in its XML tool formats (glm4_moe, minimax2: the re-encoded
arguments reach a formatter that wants an object), so the family templates here use JSON-style tool formats.

One deliberate difference: given an assistant message with OpenAI `tool_calls`, LLaMA-Factory's server encodes the
client's arguments string a second time; chatplex gives the template the arguments object, as LLaMA-Factory's
training data has it. So `toolcall_round2` is compared with `function_role`, the same conversation written with
LLaMA-Factory's `function` role (objects), which its server renders in the training form.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from chatplex import ChatModel
from chatplex.server.app import create_app
from chatplex.server.settings import ServerSettings
from tests.server.conftest import serving_in_thread

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "llamafactory"
REQUESTS = json.loads((FIXTURES / "api_requests.json").read_text(encoding="utf-8"))
RECORDED = json.loads((FIXTURES / "api_replies.json").read_text(encoding="utf-8"))
ORACLE, RECORDED_DATE = RECORDED["replies"], RECORDED["tool_prompt_date"]

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _recorded_date(monkeypatch):
    """LLaMA-Factory's Llama 3 tool prompt states the date: the replies were recorded with this one."""
    from chatplex.templates.llamafactory import tool_formats

    monkeypatch.setattr(tool_formats, "today", lambda: RECORDED_DATE)


def _summary(body: dict) -> dict:
    choice = body["choices"][0]
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice["message"].get("tool_calls") or []]
    return {"content": choice["message"].get("content"), "tool_calls": calls, "finish_reason": choice["finish_reason"],
            "usage": {k: body["usage"][k] for k in ("prompt_tokens", "completion_tokens")}}


RUNS = [(t, False) for t in REQUESTS["templates"]] + [(t, True) for t in REQUESTS.get("family_templates", [])]


@pytest.mark.parametrize(("template", "family"), RUNS, ids=[f"{t}{'-family' if f else ''}" for t, f in RUNS])
def test_same_replies_as_llamafactorys_server(template, family, smollm_dir, tmp_path):
    path = smollm_dir
    if family:  # a tiny random model of the template's family, built as the oracle built it
        from tests.templates.lf_tokenizers import tiny_family_lm

        tiny_family_lm(template, smollm_dir, tmp_path)
        path = str(tmp_path)
    model = ChatModel({"model_name_or_path": path, "template": template, "infer_dtype": "float32"})
    try:
        with serving_in_thread(create_app(model, ServerSettings(api_mode="llamafactory"))) as url:
            got = {key: httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
                   for key, body in REQUESTS["requests"].items()}
    finally:
        model.close()
    for key, response in got.items():
        want = ORACLE[template][key]
        assert response.status_code == want["status"], (key, response.text)
        ours, theirs = _summary(response.json()), _summary(want["body"])
        if key == "toolcall_round2":
            theirs = _summary(ORACLE[template]["function_role"]["body"])
        assert ours == theirs, key
