"""Summaries of a benchmark level: throughput, latency percentiles and goodput under an SLO."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from tokenmill.bench.client import RequestRecord

SLO_KEYS = ("ttft", "itl", "tpot", "e2e")  # seconds; itl: a request's mean gap between tokens


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Latency:
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: list[float]) -> Latency | None:
        if not values:
            return None
        return cls(percentile(values, 50), percentile(values, 90), percentile(values, 99), max(values),
                   statistics.fmean(values))


@dataclass(frozen=True)
class LevelSummary:
    num_requests: int
    num_failed: int
    seconds: float
    requests_per_s: float
    output_tps: float
    total_tps: float
    prompt_tokens: int
    output_tokens: int
    cache_hit_rate: float  # the share of prompt tokens the server's prefix cache supplied
    ttft: Latency | None
    itl: Latency | None
    tpot: Latency | None
    e2e: Latency | None
    goodput: float | None  # share of all requests that met every SLO given; None without one
    valid: float | None = None  # share of constrained requests whose output follows its format; None if none is


def parse_slo(text: str | None) -> dict[str, float]:
    """'ttft=0.5,itl=0.1' -> {'ttft': 0.5, 'itl': 0.1} (seconds)."""
    slo: dict[str, float] = {}
    for part in filter(None, (text or "").split(",")):
        key, _, value = part.partition("=")
        if key.strip() not in SLO_KEYS:
            raise ValueError(f"unknown SLO {key.strip()!r}; use {', '.join(SLO_KEYS)}")
        slo[key.strip()] = float(value)
    return slo


def meets(record: RequestRecord, slo: dict[str, float]) -> bool:
    if not record.ok:
        return False
    measured = {"ttft": record.ttft, "e2e": record.e2e, "tpot": record.tpot,
                "itl": statistics.fmean(record.itls) if record.itls else None}
    return all(measured[key] is None or measured[key] <= limit for key, limit in slo.items())


def summarize(seconds: float, records: list[RequestRecord], slo: dict[str, float] | None = None) -> LevelSummary:
    ok = [r for r in records if r.ok]
    prompt = sum(r.prompt_tokens for r in ok)
    output = sum(r.output_tokens for r in ok)
    return LevelSummary(
        num_requests=len(records),
        num_failed=len(records) - len(ok),
        seconds=seconds,
        requests_per_s=len(ok) / seconds,
        output_tps=output / seconds,
        total_tps=(prompt + output) / seconds,
        prompt_tokens=prompt,
        output_tokens=output,
        cache_hit_rate=sum(r.cached_tokens for r in ok) / prompt if prompt else 0.0,
        ttft=Latency.of([r.ttft for r in ok]),
        itl=Latency.of([gap for r in ok for gap in r.itls]),
        tpot=Latency.of([t for r in ok if (t := r.tpot) is not None]),
        e2e=Latency.of([r.e2e for r in ok]),
        goodput=sum(meets(r, slo) for r in records) / len(records) if slo else None,
        valid=_valid_share(records),
    )


def _valid_share(records: list[RequestRecord]) -> float | None:
    judged = [r.valid for r in records if r.valid is not None]
    return sum(judged) / len(judged) if judged else None
