"""Rich tables of benchmark results: one per level, and two runs side by side."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tokenmill.bench.results import BenchRun, LevelResult
from tokenmill.bench.stats import Latency, LevelSummary

LATENCY_NAMES = {"ttft": "TTFT", "itl": "ITL", "tpot": "TPOT", "e2e": "E2E"}


def summary_rows(s: LevelSummary) -> list[tuple[str, str]]:
    rows = [
        ("requests (failed)", f"{s.num_requests} ({s.num_failed})"),
        ("duration (s)", f"{s.seconds:.1f}"),
        ("requests/s", f"{s.requests_per_s:.2f}"),
        ("output tokens/s", f"{s.output_tps:.1f}"),
        ("total tokens/s", f"{s.total_tps:.1f}"),
        ("prompt / output tokens", f"{s.prompt_tokens} / {s.output_tokens}"),
        ("prefix cache hit rate", f"{100 * s.cache_hit_rate:.1f}%"),
    ]
    for key, name in LATENCY_NAMES.items():
        rows.append((f"{name} p50/p90/p99/max (ms)", _latency(getattr(s, key))))
    if s.goodput is not None:
        rows.append(("goodput (met the SLO)", f"{100 * s.goodput:.1f}%"))
    if s.valid is not None:
        rows.append(("outputs that parse and validate", f"{100 * s.valid:.1f}%"))
    return rows


def _latency(lat: Latency | None) -> str:
    if lat is None:
        return "-"
    return " / ".join(f"{1000 * v:.0f}" for v in (lat.p50, lat.p90, lat.p99, lat.max))


def print_level(console: Console, run: BenchRun, level: LevelResult) -> None:
    table = Table(title=f"{run.model} · {run.workload} · {level.label}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary_rows(level.summary):
        table.add_row(name, value)
    if level.speculation is not None:
        spec = level.speculation
        table.add_row(f"speculative ({spec.method}): accepted / proposed",
                      f"{spec.accepted} / {spec.proposed} ({100 * spec.acceptance_rate:.1f}%)")
    console.print(table)


def print_comparison(console: Console, a: BenchRun, b: BenchRun, a_name: str, b_name: str) -> None:
    """Levels matched by label; ratios are b / a (above 1: b is higher)."""
    b_levels = {level.label: level for level in b.levels}
    for level in a.levels:
        other = b_levels.get(level.label)
        if other is None:
            console.print(f"[dim]{level.label}: only in {a_name}[/dim]")
            continue
        table = Table(title=f"{level.label} · {a.workload} vs {b.workload}", title_justify="left")
        for column, justify in (("metric", "left"), (a_name, "right"), (b_name, "right"), ("b / a", "right")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for name, x, y in _compared(level.summary, other.summary):
            table.add_row(name, f"{x:.1f}", f"{y:.1f}", f"{y / x:.2f}x" if x else "-")
        console.print(table)


def _compared(a: LevelSummary, b: LevelSummary) -> list[tuple[str, float, float]]:
    rows = [("requests/s", a.requests_per_s, b.requests_per_s), ("output tokens/s", a.output_tps, b.output_tps),
            ("total tokens/s", a.total_tps, b.total_tps)]
    for key, name in LATENCY_NAMES.items():
        la, lb = getattr(a, key), getattr(b, key)
        if la is not None and lb is not None:
            rows.append((f"{name} p50 (ms)", 1000 * la.p50, 1000 * lb.p50))
            rows.append((f"{name} p99 (ms)", 1000 * la.p99, 1000 * lb.p99))
    return rows
