from __future__ import annotations

import pytest

from chatplex.engines.stop_strings import StopStringMatcher


def run(stops, pieces):
    m = StopStringMatcher(tuple(stops))
    out = []
    for p in pieces:
        text, hit = m.feed(p)
        out.append(text)
        if hit is not None:
            return "".join(out), hit
    return "".join(out) + m.flush(), None


@pytest.mark.parametrize(
    "pieces",
    [["Hello END world"], ["Hello E", "N", "D world"], ["Hello ", "EN", "Dx"], list("Hello END world")],
)
def test_cuts_exactly_before_the_stop_string_across_pieces(pieces):
    assert run(["END"], pieces) == ("Hello ", "END")


def test_partial_match_is_released_when_it_turns_out_not_to_be_a_stop():
    m = StopStringMatcher(("STOP",))
    assert m.feed("ab ST") == ("ab ", None)
    assert m.feed("ART") == ("START", None)


def test_earliest_of_several_stops_wins_and_no_stop_passes_through():
    assert run(["world", "lo"], ["Hello world"]) == ("Hel", "lo")
    assert run([], ["anything"]) == ("anything", None)
    assert run(["zz"], ["a", "z"]) == ("az", None)  # flushed at the end
