"""Benchmark prompts: seeded random ones (word list and real tokenizer) and JSONL files."""

from __future__ import annotations

import json

import pytest

from chatplex.bench import load_jsonl, random_prompts
from chatplex.bench.prompts import WORDS, sample_lengths
from chatplex.errors import ConfigError


def test_word_prompts_have_set_lengths_and_repeat_with_the_seed():
    prompts = random_prompts(5, input_len=20, output_len=7, seed=3)
    assert [len(p.prompt.split()) for p in prompts] == [20] * 5
    assert all(w in WORDS for p in prompts for w in p.prompt.split())
    assert [p.output_len for p in prompts] == [7] * 5
    assert prompts == random_prompts(5, input_len=20, output_len=7, seed=3)
    assert prompts != random_prompts(5, input_len=20, output_len=7, seed=4)
    assert len({p.prompt for p in prompts}) == 5


def test_range_ratio_spreads_lengths_within_bounds():
    import random

    lengths = sample_lengths(random.Random(0), 500, 100, 0.5)
    assert min(lengths) >= 50 and max(lengths) <= 150
    assert len(set(lengths)) > 20
    assert set(sample_lengths(random.Random(0), 50, 1, 0.9)) <= {1, 2}  # never below one token


def test_tokenizer_prompts_encode_to_their_length(smollm_tokenizer):
    prompts = random_prompts(6, input_len=64, output_len=16, range_ratio=0.25, seed=0, tokenizer=smollm_tokenizer)
    for p in prompts:
        assert 48 <= p.prompt_tokens <= 80
        assert len(smollm_tokenizer.encode(p.prompt, add_special_tokens=False)) == p.prompt_tokens
    special = set(smollm_tokenizer.all_special_tokens)
    assert not any(tok in p.prompt for p in prompts for tok in special)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_prompts": 0}, "num_prompts"),
        ({"input_len": 0}, "input_len"),
        ({"output_len": -1}, "output_len"),
        ({"range_ratio": 1.0}, "range_ratio"),
    ],
)
def test_bad_lengths_name_the_field(kwargs, field):
    args = {"num_prompts": 2, "input_len": 8, "output_len": 8, **kwargs}
    with pytest.raises(ConfigError, match=field) as info:
        random_prompts(**args)
    assert info.value.param == field


def test_jsonl_prompts_and_messages(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "hello"},
        {"messages": [{"role": "user", "content": "hi"}], "output_len": 3},
        {"prompt": "bye", "max_tokens": 9},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    prompts = load_jsonl(str(path), output_len=5)
    assert [p.output_len for p in prompts] == [5, 3, 9]
    assert prompts[0].chat_messages() == [{"role": "user", "content": "hello"}]
    assert prompts[1].chat_messages() == [{"role": "user", "content": "hi"}]
    repeated = load_jsonl(str(path), output_len=5, num_prompts=7)
    assert [p.prompt for p in repeated][3] == "hello" and len(repeated) == 7


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "p.jsonl:1: not valid JSON"),
        ("[1, 2]", "p.jsonl:1: expected a JSON object"),
        ('{"prompt": "a", "messages": []}', "exactly one of 'prompt' and 'messages'"),
        ('{"prompt": 5}', "'prompt' must be a string"),
        ('{"messages": "hi"}', "'messages' must be a non-empty list"),
        ('{"prompt": "a", "output_len": 0}', "output_len must be an integer >= 1"),
    ],
)
def test_bad_jsonl_lines_name_line_and_field(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        load_jsonl(str(path), output_len=5)


def test_missing_and_empty_jsonl(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_jsonl(str(tmp_path / "nope.jsonl"), output_len=5)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        load_jsonl(str(tmp_path / "empty.jsonl"), output_len=5)
