"""Routing policies over three local `tokenmill serve` backends behind `tokenmill router`.

- shared-prefix: 9 tenants, each with its own system prompt of about 600 tokens, ask 54 short
  questions in a shuffled order (seeded), 3 at a time. Each backend's KV cache (32 MiB of int8, about
  2,800 tokens) holds the prompts of three or four tenants, not all nine: where a tenant's
  requests go decides whether its prompt is still cached. Figures: the share of prompt tokens the
  backends' prefix caches supplied (from each answer's usage), and TTFT.
- mixed-length: 48 requests arriving as a Poisson stream at 0.5 a second (below what the
  machine serves, so that queues come from routing, not overload), a quarter of them with prompts
  of about 1,500 tokens, the rest about 40; 32 output tokens each; 128 MiB of KV per backend.
  Figures: TTFT's p50 and p99, the short requests' p99 (what queues behind a long prefill) and
  the long requests' mean.

Every policy gets fresh backends (empty caches); the backends share this machine's cores, so the
figures compare where the work goes, not more hardware. OMP_NUM_THREADS=1 gives each backend one
thread: three backends of two threads each on two cores run every step about three times slower. Medians of `--rounds` rounds.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/router.py [--rounds 2] [--policies round_robin,least_loaded,prefix_aware]
                                             [--workloads shared,mixed]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import random
import statistics
import tempfile
from pathlib import Path

from tokenmill.bench.chat_workloads import ChatRequest
from tokenmill.bench.client import RequestRecord, Target, run_level
from tokenmill.bench.local_server import LocalServer
from tokenmill.bench.report import load_average_note, print_figures
from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.model.default import DEFAULT_MODEL_NAME

LONG_PROMPT_TOKENS = 500  # the mixed workload's long prompts have about 1,500 tokens, its short ones about 40
MIXED_RATE = 0.5  # requests a second, well below what the machine serves of this mix
TOPICS = ["accounting", "travel", "cooking", "gardening", "astronomy", "law", "music", "medicine", "sailing"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--policies", default="round_robin,least_loaded,prefix_aware")
    parser.add_argument("--workloads", default="shared,mixed", help="shared (shared-prefix), mixed (mixed-length)")
    return parser.parse_args()


def shared_prefix_requests(round_: int) -> list[ChatRequest]:
    systems = [f"You are the {topic} assistant of team {round_}. " + f"Answer questions about {topic} briefly, "
               f"accurately and politely, citing the {topic} handbook where it helps. " * 33 for topic in TOPICS]
    tenants = [i % len(TOPICS) for i in range(54)]
    random.Random(round_).shuffle(tenants)
    return [ChatRequest([{"role": "system", "content": systems[tenant]},
                         {"role": "user", "content": f"Question {i}: what should I check first?"}], 16)
            for i, tenant in enumerate(tenants)]  # fmt: skip


def mixed_length_requests(round_: int) -> list[ChatRequest]:
    long_text = "Here is a long report on quarterly results, region by region, with many figures. " * 90
    return [ChatRequest([{"role": "user", "content": (f"Report {round_}-{i}. " + long_text if i % 4 == 0 else "")
                         + f"Summarize item {i} in one line."}], 32) for i in range(48)]  # fmt: skip


def measure(workload: str, policy: str, round_: int, logs: Path) -> dict[str, float]:
    """One workload through fresh backends (empty caches) behind a router with the policy."""
    kv_memory = {"shared": 32, "mixed": 128}[workload] * 2**20
    backends = [LocalServer.launch(["--kv-cache-memory", str(kv_memory)], logs / f"{workload}-{policy}-{round_}-{i}.log")
                for i in range(3)]  # fmt: skip
    for backend in backends:
        backend.wait_ready()
    router = LocalServer.launch_router(backends, logs / f"router-{workload}-{policy}-{round_}.log", "--policy", policy)
    try:
        target = Target(f"{router.url}/v1", DEFAULT_MODEL_NAME)
        if workload == "shared":
            _, records = asyncio.run(run_level(target, shared_prefix_requests(round_), concurrency=3))
        else:
            _, records = asyncio.run(run_level(target, mixed_length_requests(round_), request_rate=MIXED_RATE,
                                               seed=round_))  # fmt: skip
    finally:
        for server in (router, *backends):
            server.stop()
    failed = [r.error for r in records if not r.ok]
    if failed:
        raise SystemExit(f"{policy}: {len(failed)} requests failed, e.g. {failed[0]}")
    if workload == "shared":
        return {"hit rate": sum(r.cached_tokens for r in records) / sum(r.prompt_tokens for r in records),
                "mean TTFT (ms)": 1e3 * statistics.mean(r.ttft for r in records)}  # fmt: skip
    short = [r for r in records if r.prompt_tokens < LONG_PROMPT_TOKENS]
    long = [r for r in records if r.prompt_tokens >= LONG_PROMPT_TOKENS]
    return {"TTFT p50 (ms)": 1e3 * percentile(records, 0.5), "TTFT p99 (ms)": 1e3 * percentile(records, 0.99),
            "short p99 (ms)": 1e3 * percentile(short, 0.99),
            "long mean (ms)": 1e3 * statistics.mean(r.ttft for r in long)}


def percentile(records: list[RequestRecord], p: float) -> float:
    ttfts = sorted(r.ttft for r in records)
    return ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))]


def main() -> None:
    args = parse_args()
    logs = Path(tempfile.mkdtemp(prefix="tokenmill-router-"))
    load_before = os.getloadavg()[0]
    policies = args.policies.split(",")
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
          f"SmolLM2-135M-Instruct, default mode; 3 backends behind tokenmill router")
    for workload in args.workloads.split(","):
        results = {p: [measure(workload, p, r, logs) for r in range(args.rounds)] for p in policies}
        rows, every = [], {}
        for policy, runs in results.items():
            rows.append([policy, *(_shown(key, statistics.median(run[key] for run in runs)) for key in runs[0])])
            every.update({f"{workload} {policy} {key}": [run[key] for run in runs] for key in runs[0]})
        print(f"\n{workload}:")
        print_figures(["policy", *runs[0]], rows, every, [load_average_note(load_before)])


def _shown(key: str, value: float) -> str:
    return f"{value:.1%}" if key == "hit rate" else f"{value:.0f}"


if __name__ == "__main__":
    main()
