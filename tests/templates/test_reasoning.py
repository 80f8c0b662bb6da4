"""The `<think>` split, whole and streamed at every split point, including replies that start inside thinking."""

from __future__ import annotations

import pytest

from chatplex.errors import ConfigError
from chatplex.templates.reasoning import ReasoningParser, get_reasoning_parser

# (reply, starts_inside, reasoning, content)
CASES = [
    ("<think>\nLet me think.\n</think>\n\nParis.", False, "Let me think.\n", "Paris."),
    ("<think>\n\n</think>\n\nParis.", False, None, "Paris."),  # Qwen3 with thinking switched off in the prompt
    ("Paris.", False, None, "Paris."),
    ("  Paris <think> is text here </think>", False, None, "  Paris <think> is text here </think>"),
    ("<think>cut short by max_tokens", False, "cut short by max_tokens", None),
    ("I wonder < > </thin k>\n</think>Answer: <b>2</b>", True, "I wonder < > </thin k>\n", "Answer: <b>2</b>"),
    ("\nOnly thoughts, no answer", True, "Only thoughts, no answer", None),
    ("</think>Straight to the answer", True, None, "Straight to the answer"),
    ("<think>a</think>b</think>c", False, "a", "b</think>c"),
    ("<thi", False, None, "<thi"),
    ("<think>思考 ☀</think>答え", False, "思考 ☀", "答え"),
]


def _stream(pieces, starts_inside):
    parser = ReasoningParser(starts_inside=starts_inside)
    deltas = [parser.feed(p) for p in pieces] + [parser.finish()]
    return "".join(d.reasoning for d in deltas) or None, "".join(d.content for d in deltas) or None


@pytest.mark.parametrize("text,inside,reasoning,content", CASES)
def test_parse(text, inside, reasoning, content):
    assert ReasoningParser(starts_inside=inside).parse(text) == (reasoning, content)


@pytest.mark.parametrize("text,inside,reasoning,content", CASES)
def test_stream_matches_parse_at_every_split(text, inside, reasoning, content):
    assert _stream(list(text), inside) == (reasoning, content)
    for cut in range(len(text) + 1):
        assert _stream([text[:cut], text[cut:]], inside) == (reasoning, content), cut


def test_reasoning_streams_before_the_block_closes():
    parser = ReasoningParser()
    assert parser.feed("<think>step one, ").reasoning == "step one, "
    assert parser.feed("two</thi").reasoning == "two"  # "</thi" held back
    delta = parser.feed("nk>\n\nAnswer")
    assert (delta.reasoning, delta.content) == ("", "Answer")


def test_prompt_decides_where_the_reply_starts():
    assert get_reasoning_parser("think", "<｜User｜>hi<｜Assistant｜><think>\n").starts_inside
    assert not get_reasoning_parser("think", "<|im_start|>assistant\n").starts_inside
    assert not get_reasoning_parser("think", "<|im_start|>assistant\n<think>\n\n</think>\n\n").starts_inside
    with pytest.raises(ConfigError, match="think"):
        get_reasoning_parser("nope")
