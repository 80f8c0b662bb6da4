"""POST /v1/completions: one prompt or several, streaming and not."""

from __future__ import annotations

from tests.server.conftest import SERVED_NAME

PROMPT = "The capital of France is"


def test_single_prompt_usage_is_exact(client, tokenizer):
    r = client.completions.create(model=SERVED_NAME, prompt=PROMPT, temperature=0, max_tokens=4)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"


def test_prompt_list_gives_one_choice_per_prompt_and_n(client):
    r = client.completions.create(model=SERVED_NAME, prompt=[PROMPT, "Once upon a time"], n=2, temperature=1.0, seed=2, max_tokens=3)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 12
    single = client.completions.create(model=SERVED_NAME, prompt=PROMPT, temperature=0, max_tokens=3)
    other = client.completions.create(model=SERVED_NAME, prompt="Once upon a time", temperature=0, max_tokens=3)
    assert r.usage.prompt_tokens == single.usage.prompt_tokens + other.usage.prompt_tokens


def test_streamed_equals_non_streamed(client):
    whole = client.completions.create(model=SERVED_NAME, prompt=[PROMPT, "1, 2, 3,"], temperature=0, max_tokens=8)
    chunks = list(client.completions.create(
        model=SERVED_NAME, prompt=[PROMPT, "1, 2, 3,"], temperature=0, max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    ))
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice.index]
        assert "".join(c.text for c in mine) == choice.text
        assert [c.finish_reason for c in mine if c.finish_reason] == [choice.finish_reason]
        assert mine[-1].finish_reason is not None
    exclude = {"prompt_tokens_details"}  # the streamed request found the prompt cached
    assert chunks[-1].usage.model_dump(exclude=exclude) == whole.usage.model_dump(exclude=exclude)


def test_legacy_logprobs(client):
    r = client.completions.create(model=SERVED_NAME, prompt=PROMPT, temperature=0, max_tokens=4, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset)


def test_stop_list(client):
    r = client.completions.create(model=SERVED_NAME, prompt="1, 2, 3, 4,", temperature=0, max_tokens=20, stop=[" 7", "\n"])
    assert r.choices[0].finish_reason == "stop"
    assert " 7" not in r.choices[0].text and "\n" not in r.choices[0].text
