"""Percentiles, per-request latencies and goodput against direct computations on timestamps."""

import random

import numpy as np
import pytest

from tokenmill.bench.client import RequestRecord
from tokenmill.bench.stats import parse_slo, percentile, summarize


def recorded(seed: int, n: int = 57) -> list[RequestRecord]:
    """Requests with random start times and token arrival times, as the client records them."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        start = rng.uniform(0, 5)
        times = list(np.cumsum([rng.expovariate(2.0)] + [rng.expovariate(30.0) for _ in range(rng.randint(0, 40))]) + start)
        records.append(RequestRecord(start=start, end=times[-1] + rng.uniform(0, 0.01), token_times=times,
                                     prompt_tokens=rng.randint(5, 500), output_tokens=len(times)))
    return records


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_percentile_equals_a_direct_computation(seed):
    records = recorded(seed)
    summary = summarize(10.0, records)
    ttft = [r.token_times[0] - r.start for r in records]
    itl = [b - a for r in records for a, b in zip(r.token_times, r.token_times[1:])]
    e2e = [r.end - r.start for r in records]
    tpot = [(r.end - r.token_times[0]) / (len(r.token_times) - 1) for r in records if len(r.token_times) > 1]
    for values, lat in ((ttft, summary.ttft), (itl, summary.itl), (e2e, summary.e2e), (tpot, summary.tpot)):
        for p, got in ((50, lat.p50), (90, lat.p90), (99, lat.p99), (100, lat.max)):
            assert got == pytest.approx(np.percentile(values, p), rel=1e-12)
        assert lat.mean == pytest.approx(np.mean(values))


def test_percentile_of_one_value_and_of_two():
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5


def test_throughput_counts_only_the_requests_that_succeeded():
    records = recorded(3, n=10)
    records[4].error = "HTTP 500"
    summary = summarize(4.0, records)
    ok = [r for i, r in enumerate(records) if i != 4]
    assert summary.num_failed == 1 and summary.num_requests == 10
    assert summary.output_tps == sum(r.output_tokens for r in ok) / 4.0
    assert summary.total_tps == sum(r.output_tokens + r.prompt_tokens for r in ok) / 4.0
    assert summary.requests_per_s == 9 / 4.0


def test_goodput_is_the_share_of_requests_within_every_slo():
    records = recorded(4)
    slo = parse_slo("ttft=0.5,itl=0.05")
    expected = sum(
        r.token_times[0] - r.start <= 0.5 and (len(r.token_times) < 2 or np.mean(np.diff(r.token_times)) <= 0.05)
        for r in records
    ) / len(records)
    assert summarize(10.0, records, slo).goodput == pytest.approx(expected)
    assert 0 < expected < 1  # the SLO splits this sample


def test_an_unknown_slo_is_refused():
    with pytest.raises(ValueError, match="unknown SLO 'latency'"):
        parse_slo("latency=1")
