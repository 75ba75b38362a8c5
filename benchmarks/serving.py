"""Serving: `tokenmill serve` driven by streaming chat requests, against the offline engine.

The workload of offline_throughput.py (64 prompts of real English text, 100-600 tokens, 128 greedy
output tokens each, EOS ignored), each prompt sent as one user message of a streaming chat
request, at concurrency 1, 16 and 64. The same chat prompts also run through the offline engine
(`LLM.generate`) in this process, alternating with the server at the highest concurrency over
several rounds, so that the two are compared side by side on the same noisy machine; at
concurrency 1 each request runs alone in the offline engine and then through the server, taking
turns, for the time between tokens against the offline decode step.

    python benchmarks/serving.py [--rounds 3] [--concurrency 1 16 64] [--single-requests 4]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shlex
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tokenmill.bench.chat_workloads import ChatRequest
from tokenmill.bench.client import RequestRecord, Target, run_level
from tokenmill.bench.local_server import LocalServer
from tokenmill.bench.report import command_line, load_average_note, markdown_table
from tokenmill.kernels.cpu_info import cpu_model
from tokenmill.bench.stats import percentile
from tokenmill.bench.workloads import WorkloadRequest, offline_workload, spread_subset
from tokenmill.engine_args import add_engine_args, engine_options
from tokenmill.model.default import DEFAULT_MODEL_NAME, default_model_path
from tokenmill.model.tokenizer import load_tokenizer

console = Console()


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    requests: list[RequestRecord]

    @property
    def output_tps(self) -> float:
        return sum(r.output_tokens for r in self.requests) / self.seconds


def drive(url: str, requests: list[WorkloadRequest], concurrency: int) -> LevelResult:
    chats = [ChatRequest([{"role": "user", "content": r.prompt}], r.output_len) for r in requests]
    seconds, records = asyncio.run(run_level(Target(f"{url}/v1", DEFAULT_MODEL_NAME), chats, concurrency))
    return LevelResult(concurrency, seconds, records)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="offline / server-at-top-concurrency rounds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--single-requests", type=int, default=4, help="requests timed at concurrency 1")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine-args", default="",
                        help="engine options for the server and the offline engine alike, e.g. '--quantization gguf'")
    args = parser.parse_args()
    if args.output_len < 2:
        parser.error("--output-len must be >= 2 to measure the time between tokens")
    return args


# ---- the offline engine ----------------------------------------------------------------------------


def offline_round(llm, prompts: list[str], output_len: int) -> tuple[float, list[str]]:
    from tokenmill import SamplingParams

    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outputs) / seconds, [o.outputs[0].text for o in outputs]


def offline_decode_step(llm, prompt: str, output_len: int) -> float:
    """Seconds per token after the first, for one request alone in the offline engine."""
    from tokenmill import SamplingParams

    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    output = llm.generate([prompt], params, use_tqdm=False)[0]
    return output.metrics.decode_seconds_per_token(len(output.outputs[0].token_ids))


# ---- the server ------------------------------------------------------------------------------------


# ---- report ----------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> tuple[float, float, float]:
    return percentile(values, 50), percentile(values, 90), percentile(values, 99)


def level_row(level: LevelResult, offline_tps: float) -> list[str]:
    ttft = percentiles([r.ttft for r in level.requests])
    itl = percentiles([x for r in level.requests for x in r.itls])
    e2e = percentiles([r.e2e for r in level.requests])
    ms = lambda triple: " / ".join(f"{1000 * x:.0f}" for x in triple)  # noqa: E731
    return [str(level.concurrency), str(len(level.requests)), f"{level.output_tps:.1f}",
            f"{level.output_tps / offline_tps:.2f}", ms(ttft), ms(itl), f"{' / '.join(f'{x:.1f}' for x in e2e)}"]


HEADER = ["concurrency", "requests", "output tok/s", "vs offline", "TTFT p50/p90/p99 (ms)", "ITL p50/p90/p99 (ms)",
          "E2E p50/p90/p99 (s)"]


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    tokenizer = load_tokenizer(default_model_path())
    workload = offline_workload(tokenizer, num_requests=args.num_requests, output_len=args.output_len, seed=args.seed)
    from tokenmill import LLM

    engine_args = shlex.split(args.engine_args)
    options = argparse.ArgumentParser()
    add_engine_args(options)
    # The rounds repeat one workload: measure the work, not the cache.
    llm = LLM(**engine_options(options.parse_args([*engine_args, "--no-prefix-caching"])))
    chat_prompts = [llm.tokenizer.apply_chat_template([{"role": "user", "content": r.prompt}]) for r in workload]
    top = max(args.concurrency)
    log = Path(tempfile.mkdtemp()) / "server.log"
    server = LocalServer.launch([*engine_args, "--no-prefix-caching"], log)
    server.wait_ready()
    url = server.url
    try:
        offline_tps, top_levels = [], []
        for round_ in range(1, args.rounds + 1):
            console.print(f"round {round_}/{args.rounds}: offline engine, {len(workload)} requests ...")
            tps, offline_texts = offline_round(llm, chat_prompts, args.output_len)
            offline_tps.append(tps)
            console.print(f"round {round_}/{args.rounds}: server at concurrency {top} ...")
            top_levels.append(drive(url, workload, top))
        levels, offline_steps = {}, []
        for c in sorted(set(args.concurrency) - {top}):
            requests = spread_subset(workload, args.single_requests) if c == 1 else workload
            console.print(f"server at concurrency {c}, {len(requests)} requests ...")
            if c == 1:  # each request alone, in the offline engine and then through the server, taking turns
                singles = []
                for request in requests:
                    prompt = chat_prompts[workload.index(request)]
                    offline_steps.append(offline_decode_step(llm, prompt, args.output_len))
                    singles.append(drive(url, [request], 1))
                levels[1] = LevelResult(1, sum(s.seconds for s in singles), [r for s in singles for r in s.requests])
            else:
                levels[c] = drive(url, requests, c)
    finally:
        server.stop()
    levels[top] = sorted(top_levels, key=lambda level: level.output_tps)[len(top_levels) // 2]
    offline = statistics.median(offline_tps)
    identical = sum(a.text == b for a, b in zip(levels[top].requests, offline_texts))

    rows = [level_row(levels[c], offline) for c in sorted(levels)]
    table = Table(title="Serving: streaming chat requests against the offline engine")
    for name in HEADER:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    notes = [
        f"offline engine (LLM.generate, same chat prompts): {offline:.1f} output tok/s, median of "
        f"{', '.join(f'{x:.1f}' for x in offline_tps)}",
        f"server at concurrency {top}, every round: {', '.join(f'{lv.output_tps:.1f}' for lv in top_levels)} "
        f"output tok/s (the median round is in the table)",
        f"server text identical to the offline engine's on {identical}/{len(workload)} requests (greedy)",
        load_average_note(load_before),
    ]
    if offline_steps:
        step = statistics.median(offline_steps)
        itl = percentile([x for r in levels[1].requests for x in r.itls], 50)
        notes.insert(2, f"single stream: ITL p50 {1000 * itl:.2f} ms through the server against the offline engine's "
                        f"decode step of {1000 * step:.2f} ms (median of the same {len(offline_steps)} requests, "
                        f"each run alone, taking turns): {itl / step:.2f}x")
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
    environment = {"date": datetime.date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} cores",
                   "model": DEFAULT_MODEL_NAME, "command": command_line()}
    lines = [*markdown_table(list(environment), [environment.values()], ["---"] * len(environment)), "",
             *markdown_table(HEADER, rows), "", *notes]
    console.print("\n" + "\n".join(lines), markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
