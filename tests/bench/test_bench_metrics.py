"""The benchmark's arithmetic, on hand-made timings."""

from __future__ import annotations

import math

import pytest

from chatplex.bench import RequestRecord, arrival_offsets, request_metrics, summarize
from chatplex.bench.metrics import Distribution, max_overlap


def test_request_metrics_from_usage():
    # sent at 10.0; text chunks at 10.5, 10.7, 11.0, 11.1; stream ended at 11.5; server says 5 tokens
    rec = RequestRecord(start=10.0, end=11.5, chunk_times=[10.5, 10.7, 11.0, 11.1], prompt_tokens=12, completion_tokens=5)
    m = request_metrics(rec, t0=9.0)
    assert m.ok
    assert m.start == pytest.approx(1.0)
    assert m.ttft == pytest.approx(0.5)
    assert m.e2e == pytest.approx(1.5)
    assert m.tpot == pytest.approx((1.5 - 0.5) / 4)
    assert m.itls == pytest.approx([0.2, 0.3, 0.1])
    assert m.chunk_offsets == pytest.approx([1.5, 1.7, 2.0, 2.1])
    assert (m.prompt_tokens, m.output_tokens) == (12, 5)


def test_request_metrics_without_usage_counts_chunks_and_uses_client_prompt_count():
    rec = RequestRecord(start=0.0, end=2.0, chunk_times=[1.0, 1.5, 2.0], expected_prompt_tokens=7)
    m = request_metrics(rec)
    assert (m.prompt_tokens, m.output_tokens) == (7, 3)
    assert m.tpot == pytest.approx(0.5)


def test_one_token_output_has_no_tpot():
    m = request_metrics(RequestRecord(start=0.0, end=0.3, chunk_times=[0.3], completion_tokens=1))
    assert m.ok and m.tpot is None and m.itls == []


def test_failed_and_empty_requests_are_failures():
    failed = request_metrics(RequestRecord(start=0.0, end=1.0, error="HTTP 500: boom"))
    assert not failed.ok and failed.error == "HTTP 500: boom" and failed.ttft is None
    empty = request_metrics(RequestRecord(start=0.0, end=1.0))
    assert not empty.ok and "no text" in empty.error


def test_distribution_in_milliseconds():
    d = Distribution.of([0.1, 0.2, 0.3, 0.4], (50, 99))
    assert d.mean == pytest.approx(250.0)
    assert d.median == pytest.approx(250.0)
    assert d.percentiles["p50"] == pytest.approx(250.0)
    # linear interpolation between the 3rd and 4th values: 300 + 0.97 * 100
    assert d.percentiles["p99"] == pytest.approx(397.0)
    assert d.std == pytest.approx(math.sqrt(((150**2) * 2 + (50**2) * 2) / 4))
    empty = Distribution.of([], (99,))
    assert empty.mean is None and empty.percentiles == {"p99": None}


def test_summarize_two_requests_and_a_failure():
    a = request_metrics(RequestRecord(start=0.0, end=2.0, chunk_times=[0.5, 1.0, 2.0], prompt_tokens=10, completion_tokens=3))
    b = request_metrics(RequestRecord(start=1.0, end=4.0, chunk_times=[2.0, 4.0], prompt_tokens=20, completion_tokens=2))
    c = request_metrics(RequestRecord(start=1.0, end=1.1, error="HTTP 429: busy"))
    s = summarize([a, b, c], duration=4.0, percentiles=(50,))
    assert (s.completed, s.failed) == (2, 1)
    assert (s.total_input_tokens, s.total_output_tokens) == (30, 5)
    assert s.request_throughput == pytest.approx(0.5)
    assert s.output_throughput == pytest.approx(5 / 4)
    assert s.total_token_throughput == pytest.approx(35 / 4)
    assert s.max_concurrent_requests == 2  # a runs 0..2, b runs 1..4
    assert s.ttft.mean == pytest.approx((500 + 1000) / 2)
    # TPOT: a (2.0-0.5)/2 = 0.75 s, b (3.0-1.0)/1 = 2.0 s
    assert s.tpot.mean == pytest.approx((750 + 2000) / 2)
    # ITLs pooled: a 0.5, 1.0; b 2.0
    assert s.itl.median == pytest.approx(1000.0)
    assert s.e2e.percentiles["p50"] == pytest.approx(2500.0)


def test_summarize_rejects_zero_duration():
    with pytest.raises(ValueError, match="duration"):
        summarize([], duration=0.0)


def test_max_overlap_touching_intervals_do_not_overlap():
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert max_overlap([(0, 3), (1, 2), (1.5, 4)]) == 3
    assert max_overlap([]) == 0


def test_arrival_offsets():
    assert arrival_offsets(4, math.inf) == [0.0] * 4
    offsets = arrival_offsets(2000, rate=4.0, seed=1)
    assert offsets == arrival_offsets(2000, rate=4.0, seed=1)
    assert offsets[0] == 0.0 and all(b > a for a, b in zip(offsets, offsets[1:]))
    # Poisson arrivals at 4/s: 2000 gaps average 0.25 s (the law of large numbers, well inside 10%)
    assert offsets[-1] / 1999 == pytest.approx(0.25, rel=0.1)
