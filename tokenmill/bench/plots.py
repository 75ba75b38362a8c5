"""PNGs of a benchmark run: latency CDFs per level, throughput and p99 latency across levels."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from tokenmill.bench.results import BenchRun  # noqa: E402

_LATENCIES = {"ttft": "time to first token", "itl": "inter-token latency", "e2e": "end-to-end latency"}


def write_plots(run: BenchRun, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_cdfs(run, out_dir / "latency_cdf.png")]
    if len(run.levels) > 1:
        paths.append(_across_levels(run, out_dir / "throughput_and_p99.png"))
    return paths


def _cdfs(run: BenchRun, path: Path) -> Path:
    fig, axes = plt.subplots(1, len(_LATENCIES), figsize=(5 * len(_LATENCIES), 4), constrained_layout=True)
    for ax, (key, title) in zip(axes, _LATENCIES.items()):
        for level in run.levels:
            values = sorted(level.samples(key))
            if values:
                ax.plot([v * 1000 for v in values], [(i + 1) / len(values) for i in range(len(values))],
                        label=level.label)
        ax.set_title(title)
        ax.set_xscale("log")  # levels differ by orders of magnitude
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_ylabel("fraction of samples at or below")
    return _save(fig, axes, f"{run.model} on {run.workload}: latency CDFs", path)


def _across_levels(run: BenchRun, path: Path) -> Path:
    x = [level.load for level in run.levels]
    x_label = "request rate (requests/s)" if run.levels[0].request_rate is not None else "concurrency"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    left.plot(x, [level.summary.output_tps for level in run.levels], marker="o", label="output tokens/s")
    left.plot(x, [level.summary.total_tps for level in run.levels], marker="s", label="total tokens/s")
    left.set_xlabel(x_label)
    left.set_ylabel("tokens per second")
    left.set_title("throughput")
    for key, title in _LATENCIES.items():
        right.plot(x, [getattr(level.summary, key).p99 * 1000 if getattr(level.summary, key) else None
                       for level in run.levels], marker="o", label=f"p99 {title}")
    right.set_xlabel(x_label)
    right.set_ylabel("milliseconds")
    right.set_yscale("log")
    right.set_title("p99 latency")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    return _save(fig, (left, right), f"{run.model} on {run.workload}", path)


def _save(fig: plt.Figure, axes, title: str, path: Path) -> Path:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
