"""/tokenize and /detokenize (vLLM's shapes) against the session's `chatplex serve` of the embedded SmolLM2:
ids equal the tokenizer's own, messages equal the rendered prompt tokenized, and text round-trips."""

from __future__ import annotations

import pytest

TEXT = "Hello, world! 你好 🙂 {\"a\": [1, 2]}\n\tend"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]


def test_prompt(http, tokenizer):
    r = http.post("/tokenize", json={"prompt": TEXT, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == tokenizer.encode(TEXT) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 1024  # the server fixture's --max-model-len
    assert body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"])
    plain = http.post("/tokenize", json={"prompt": TEXT, "add_special_tokens": False}).json()
    assert plain["tokens"] == tokenizer.encode(TEXT, add_special_tokens=False) and plain["token_strs"] is None


def test_messages_match_render_prompt(http, chat_model, tokenizer):
    r = http.post("/tokenize", json={"model": "chatplex-test", "messages": MESSAGES})
    assert r.status_code == 200, r.text
    rendered = chat_model.render_prompt(MESSAGES)
    assert r.json()["tokens"] == tokenizer.encode(rendered, add_special_tokens=False)
    assert chat_model.tokenize(messages=MESSAGES) == r.json()["tokens"]
    reply = [*MESSAGES, {"role": "assistant", "content": "4"}]
    whole = http.post("/tokenize", json={"messages": reply, "add_generation_prompt": False}).json()["tokens"]
    expected = tokenizer.apply_chat_template(reply, tokenize=False, add_generation_prompt=False)
    assert whole == tokenizer.encode(expected, add_special_tokens=False)


def test_detokenize_round_trip(http, tokenizer):
    ids = http.post("/tokenize", json={"prompt": TEXT}).json()["tokens"]
    r = http.post("/detokenize", json={"tokens": ids})
    assert r.status_code == 200, r.text
    assert r.json()["prompt"] == tokenizer.decode(ids) == TEXT


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": MESSAGES}, "prompt"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/tokenize", {"messages": []}, "messages"),
        ("/tokenize", {"messages": MESSAGES, "continue_final_message": True}, "continue_final_message"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
        ("/detokenize", {}, "tokens"),
    ],
)
def test_bad_input(http, path, body, param):
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param), r.json()
