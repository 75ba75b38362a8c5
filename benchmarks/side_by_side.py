"""Two source trees, one benchmark, taking turns: the engine before a change against after it.

Check the earlier commit out into a second folder (`git worktree add ../base <commit>`); this
script runs a benchmark's single round in each tree in turn (the order alternating by round, so
neither always runs on a warmer or quieter machine), with the same virtual environment and the
tree on PYTHONPATH, reads the figures from the markdown the benchmark prints, and reports each
figure's median per tree and the ratio.

    python benchmarks/side_by_side.py --base ../base offline   # make bench's workload, tokenmill only
    python benchmarks/side_by_side.py --base ../base serving   # benchmarks/serving.py, concurrency 1, 16, 64
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from tokenmill.bench.report import markdown_table
from tokenmill.kernels.cpu_info import cpu_model

console = Console()
HERE = Path(__file__).resolve().parent.parent

BENCHMARKS = {
    "offline": ["benchmarks/offline_throughput.py", "--only", "tokenmill", "--rounds", "1", "--repeats", "1"],
    "serving": ["benchmarks/serving.py", "--rounds", "1"],
}
# Figures read from the markdown rows each benchmark prints: name -> (row pattern, column).
OFFLINE_ROWS = {
    "output tok/s (64 requests)": (r"output tokens/s \(median", 1),
    "TTFT, 350-token prompt (ms)": (r"TTFT, one", 1),
    "decode tok/s, single stream": (r"decode tokens/s, single stream", 1),
}


def run_round(tree: Path, benchmark: str, extra: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, *BENCHMARKS[benchmark], *extra], cwd=tree, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"{benchmark} failed in {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in done.stdout.splitlines() if line.startswith("|")]
    return offline_figures(rows) if benchmark == "offline" else serving_figures(rows)


def offline_figures(rows: list[list[str]]) -> dict[str, float]:
    figures = {}
    for name, (pattern, column) in OFFLINE_ROWS.items():
        row = next(r for r in rows if re.match(pattern, r[0]))
        figures[name] = _number(row[column])
    return figures


def serving_figures(rows: list[list[str]]) -> dict[str, float]:
    """Per concurrency level: output tokens/s, and the p50 of time to first token and between tokens."""
    figures = {}
    for row in rows:
        if row[0].isdigit() and len(row) >= 7:
            figures[f"c={row[0]} output tok/s"] = _number(row[2])
            figures[f"c={row[0]} TTFT p50 (ms)"] = _number(row[4].split("/")[0])
            figures[f"c={row[0]} ITL p50 (ms)"] = _number(row[5].split("/")[0])
    return figures


def _number(cell: str) -> float:
    return float(re.sub(r"[^0-9.]", "", cell.split()[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("--base", type=Path, required=True, help="the other source tree (e.g. a git worktree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--args", default="",
                        help="options for both trees' benchmark, e.g. --args='--concurrency 1 16'")
    parser.add_argument("--this-args", default="", help="options for this tree's benchmark only, e.g. a faster mode")
    args = parser.parse_args()
    trees = {"base": args.base.resolve(), "this": HERE}
    results: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
    for round_ in range(args.rounds):
        order = ["base", "this"] if round_ % 2 == 0 else ["this", "base"]
        for name in order:
            console.print(f"round {round_ + 1}/{args.rounds}: {args.benchmark} in {name} ({trees[name]}) ...")
            extra = shlex.split(args.args) + (shlex.split(args.this_args) if name == "this" else [])
            results[name].append(run_round(trees[name], args.benchmark, extra))
    header = ["figure", "base (median)", "this (median)", "this / base", "base, every round", "this, every round"]
    rows = []
    for figure in results["base"][0]:
        base = [r[figure] for r in results["base"]]
        this = [r[figure] for r in results["this"]]
        rows.append([figure, f"{statistics.median(base):g}", f"{statistics.median(this):g}",
                     f"{statistics.median(this) / statistics.median(base):.2f}", ", ".join(f"{x:g}" for x in base),
                     ", ".join(f"{x:g}" for x in this)])
    commit = lambda tree: subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],  # noqa: E731
                                         capture_output=True, text=True).stdout.strip()
    console.print(f"{datetime.date.today()}, {cpu_model()}, {os.cpu_count()} cores; base {commit(trees['base'])}, "
                  f"this {commit(HERE)} (with its uncommitted changes) {args.this_args}; both {args.args}; "
                  f"{args.rounds} rounds each")
    console.print("\n".join(markdown_table(header, rows)), markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
