"""Routing policies over three local `tokenmill serve` backends behind `tokenmill router`.

- shared-prefix: 6 tenants, each with its own system prompt of about 400 tokens, ask 48 short
  questions interleaved (tenant i % 6), 6 at a time. Figures: the share of prompt tokens the
  backends' prefix caches supplied (from each answer's usage), and TTFT.
- mixed-length: 48 requests arriving as a Poisson stream, a quarter of them with prompts of about
  1,500 tokens, the rest about 40; 32 output tokens each. Figure: TTFT's p50 and p99.

Every policy gets fresh backends (empty caches); the backends share this machine's cores, so the
figures compare where the work goes, not more hardware. Medians of `--rounds` rounds.

    PYTHONPATH=. python benchmarks/router.py [--rounds 2] [--policies round_robin,least_loaded,prefix_aware]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import tempfile
from pathlib import Path

from tokenmill.bench.chat_workloads import ChatRequest
from tokenmill.bench.client import RequestRecord, Target, run_level
from tokenmill.bench.local_server import LocalServer
from tokenmill.bench.report import load_average_note, print_figures
from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.model.default import DEFAULT_MODEL_NAME

TOPICS = ["accounting", "travel", "cooking", "gardening", "astronomy", "law"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--policies", default="round_robin,least_loaded,prefix_aware")
    return parser.parse_args()


def shared_prefix_requests(round_: int) -> list[ChatRequest]:
    systems = [f"You are the {topic} assistant of team {round_}. " + f"Answer questions about {topic} briefly, "
               f"accurately and politely, citing the {topic} handbook where it helps. " * 22 for topic in TOPICS]
    return [ChatRequest([{"role": "system", "content": systems[i % len(TOPICS)]},
                         {"role": "user", "content": f"Question {i}: what should I check first?"}], 16)
            for i in range(48)]  # fmt: skip


def mixed_length_requests(round_: int) -> list[ChatRequest]:
    long_text = "Here is a long report on quarterly results, region by region, with many figures. " * 90
    return [ChatRequest([{"role": "user", "content": (f"Report {round_}-{i}. " + long_text if i % 4 == 0 else "")
                         + f"Summarize item {i} in one line."}], 32) for i in range(48)]  # fmt: skip


def measure(policy: str, round_: int, logs: Path) -> dict[str, float]:
    backends = [LocalServer.launch(["--kv-cache-memory", str(256 * 2**20)], logs / f"{policy}-{round_}-{i}.log")
                for i in range(3)]  # fmt: skip
    for backend in backends:
        backend.wait_ready()
    router = LocalServer.launch_router(backends, logs / f"router-{policy}-{round_}.log", "--policy", policy)
    try:
        target = Target(f"{router.url}/v1", DEFAULT_MODEL_NAME)
        _, shared = asyncio.run(run_level(target, shared_prefix_requests(round_), concurrency=6))
        _, mixed = asyncio.run(run_level(target, mixed_length_requests(round_), request_rate=4.0, seed=round_))
    finally:
        for server in (router, *backends):
            server.stop()
    failed = [r.error for r in shared + mixed if not r.ok]
    if failed:
        raise SystemExit(f"{policy}: {len(failed)} requests failed, e.g. {failed[0]}")
    return {"hit_rate": sum(r.cached_tokens for r in shared) / sum(r.prompt_tokens for r in shared),
            "shared_ttft": 1e3 * statistics.mean(r.ttft for r in shared),
            "mixed_p50": 1e3 * percentile(mixed, 0.5), "mixed_p99": 1e3 * percentile(mixed, 0.99)}


def percentile(records: list[RequestRecord], p: float) -> float:
    ttfts = sorted(r.ttft for r in records)
    return ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))]


def main() -> None:
    args = parse_args()
    logs = Path(tempfile.mkdtemp(prefix="tokenmill-router-"))
    load_before = os.getloadavg()[0]
    policies = args.policies.split(",")
    results = {p: [measure(p, r, logs) for r in range(args.rounds)] for p in policies}
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
          f"SmolLM2-135M-Instruct, default mode; 3 backends behind tokenmill router")
    rows, every = [], {}
    for policy, runs in results.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        every[f"{policy} hit rate"] = [run["hit_rate"] for run in runs]
        every[f"{policy} mixed p99 TTFT ms"] = [run["mixed_p99"] for run in runs]
        rows.append([policy, f"{median['hit_rate']:.1%}", f"{median['shared_ttft']:.0f}", f"{median['mixed_p50']:.0f}",
                     f"{median['mixed_p99']:.0f}"])
    print_figures(["policy", "shared-prefix: prefix-cache hit rate", "shared-prefix: mean TTFT (ms)",
                   "mixed-length: TTFT p50 (ms)", "mixed-length: TTFT p99 (ms)"], rows, every,
                  [load_average_note(load_before)])  # fmt: skip


if __name__ == "__main__":
    main()
