"""Structured outputs' cost when serving: the `json` workload of `tokenmill bench` (five tasks on
code and prose, each answer under its JSON schema) at 16 requests in flight, every request
constrained, against the same requests unconstrained. Each unconstrained request asks for exactly
as many tokens as its constrained twin produced (EOS ignored), so the two runs do the same work
except for the grammar. Rounds alternate the two on one server; the table gives medians and the
ratio. Also: the share of constrained outputs that parse and validate (jsonschema), and from the
server's /metrics the mask time per masked step and the compile time.

    python benchmarks/structured_outputs.py [--rounds 3] [--num-requests 48] [--concurrency 16] [--engine-args ...]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shlex
import statistics
import tempfile
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from tokenmill.bench.chat_workloads import ChatRequest, WorkloadSpec, build_workload, unconstrained
from tokenmill.bench.client import RequestRecord, Target, run_level
from tokenmill.bench.local_server import LocalServer
from tokenmill.bench.report import command_line, load_average_note, markdown_table
from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.model.default import DEFAULT_MODEL_NAME, default_model_path
from tokenmill.model.tokenizer import load_tokenizer

console = Console()
METRICS = ("structured_output_mask_seconds_total", "structured_output_masked_steps_total",
           "structured_output_compile_seconds_total")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine-args", default="", help="options for the server, e.g. '--dtype float32'")
    return parser.parse_args()


def drive(url: str, requests: list[ChatRequest], concurrency: int) -> tuple[float, list[RequestRecord]]:
    seconds, records = asyncio.run(run_level(Target(f"{url}/v1", DEFAULT_MODEL_NAME), requests, concurrency))
    failed = [r.error for r in records if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed, the first: {failed[0]}")
    return seconds, records


def output_tps(seconds: float, records: list[RequestRecord]) -> float:
    return sum(r.output_tokens for r in records) / seconds


def grammar_counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {s.name.removeprefix("tokenmill:"): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.removeprefix("tokenmill:") in METRICS}  # fmt: skip


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    spec = WorkloadSpec("json", args.num_requests, seed=args.seed)
    constrained = build_workload(spec, load_tokenizer(default_model_path()))
    log = Path(tempfile.mkdtemp()) / "server.log"
    # no prefix caching: both runs send the same prompts, and the second would skip their prefill
    server = LocalServer.launch([*shlex.split(args.engine_args), "--no-prefix-caching"], log)
    server.wait_ready()
    tps = {"constrained": [], "unconstrained": []}
    valid, tokens = [], 0
    try:
        drive(server.url, constrained[: args.concurrency], args.concurrency)  # compiles every schema once
        before = grammar_counters(server.url)
        for round_ in range(1, args.rounds + 1):
            console.print(f"round {round_}/{args.rounds}: constrained, then unconstrained ...")
            seconds, records = drive(server.url, constrained, args.concurrency)
            tps["constrained"].append(output_tps(seconds, records))
            valid += [r.valid for r in records]
            tokens += sum(r.output_tokens for r in records)
            free = unconstrained(constrained, [r.output_tokens for r in records])
            tps["unconstrained"].append(output_tps(*drive(server.url, free, args.concurrency)))
        after = grammar_counters(server.url)
    finally:
        server.stop()
    delta = {name: after[name] - before.get(name, 0.0) for name in METRICS}
    mask_ms = 1000 * delta["structured_output_mask_seconds_total"] / max(delta["structured_output_masked_steps_total"], 1)
    median = {kind: statistics.median(values) for kind, values in tps.items()}
    ratio = median["constrained"] / median["unconstrained"]
    console.print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
                  f"server started with {args.engine_args!r}; {args.num_requests} json-workload requests per run at "
                  f"concurrency {args.concurrency}, {args.rounds} rounds")
    rows = [
        ["output tokens/s, constrained (median)", f"{median['constrained']:.1f}"],
        ["output tokens/s, unconstrained, same lengths (median)", f"{median['unconstrained']:.1f}"],
        ["constrained / unconstrained", f"{ratio:.3f}"],
        ["outputs that parse and validate", f"{sum(valid)}/{len(valid)} ({100 * sum(valid) / len(valid):.1f}%)"],
        ["mask time per masked step (ms)", f"{mask_ms:.2f}"],
        ["masked steps; output tokens constrained", f"{delta['structured_output_masked_steps_total']:.0f}; {tokens}"],
        ["compile time during the rounds (s)", f"{delta['structured_output_compile_seconds_total']:.3f}"],
    ]
    print("\n".join(markdown_table(["figure", "value"], rows)))
    print(f"every round, constrained: {', '.join(f'{x:.1f}' for x in tps['constrained'])}; "
          f"unconstrained: {', '.join(f'{x:.1f}' for x in tps['unconstrained'])}")
    print(load_average_note(load_before))
    print(command_line())


if __name__ == "__main__":
    main()
