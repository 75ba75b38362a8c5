"""`tokenmill bench serve | offline | compare | roofline`: measure any OpenAI-compatible server, or the engine."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress

from tokenmill.bench.chat_workloads import (
    WORKLOADS, ChatRequest, WorkloadSpec, build_workload, load_workload, save_workload,
)  # fmt: skip
from tokenmill.bench.client import RequestRecord, Target, run_level
from tokenmill.bench.workloads import TextTokenizer
from tokenmill.bench.results import BenchRun, LevelResult
from tokenmill.bench.roofline_cli import add_roofline_command
from tokenmill.bench.speculation import SpeculationCounts, scrape
from tokenmill.bench.stats import parse_slo
from tokenmill.bench.tables import print_comparison, print_level
from tokenmill.bench.validity import follows_format
from tokenmill.engine_args import add_engine_args, build_llm, model_name
from tokenmill.model.default import default_model_path
from tokenmill.model.tokenizer import load_tokenizer
from tokenmill.sampling_params import SamplingParams
from tokenmill.server.config import API_KEY_ENV
from tokenmill.server.structured_fields import StructuredFields

console = Console()


def add_bench_commands(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmark a server or the engine")
    kinds = bench.add_subparsers(dest="bench_command", required=True)

    serve = kinds.add_parser("serve", help="drive an OpenAI-compatible server with streaming chat requests")
    serve.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    serve.add_argument("--model", default=None, help="the model name to request (default: the server's first)")
    serve.add_argument("--api-key", default=None, help=f"or set {API_KEY_ENV}")
    load = serve.add_mutually_exclusive_group()
    load.add_argument("--concurrency", default="1,8,32", help="comma-separated levels of requests in flight")
    load.add_argument("--request-rate", default=None, help="comma-separated Poisson arrival rates (requests/s)")
    _add_workload_args(serve)
    _add_output_args(serve)
    serve.set_defaults(run=cmd_bench_serve)

    offline = kinds.add_parser("offline", help="run the engine in-process on the same workloads")
    _add_workload_args(offline, seed=False)
    _add_output_args(offline)
    add_engine_args(offline)
    offline.set_defaults(run=cmd_bench_offline)

    compare = kinds.add_parser("compare", help="two results files side by side, with ratios")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    compare.set_defaults(run=cmd_bench_compare)

    add_roofline_command(kinds)


def _add_workload_args(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    """seed: False where the engine's own --seed (also the workload's) is on the parser."""
    parser.add_argument("--workload", default="chat", help=f"{', '.join(WORKLOADS)}, or a .jsonl workload file")
    parser.add_argument("--num-requests", default="64",
                        help="requests per level; a comma-separated list gives each level its own count")
    parser.add_argument("--input-len", type=_length_range, default=None, help="tokens: N or MIN:MAX")
    parser.add_argument("--output-len", type=_length_range, default=None, help="tokens: N or MIN:MAX")
    if seed:
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="model whose tokenizer measures lengths (default: the default model)")
    parser.add_argument("--save-workload", type=Path, default=None, help="write the workload as .jsonl")


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slo", default=None, help="goodput SLO in seconds, e.g. ttft=0.5,itl=0.1")
    parser.add_argument("--out", type=Path, default=None, help="keep every number as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write PNGs into this directory")


def _length_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    bounds = (int(low), int(high or low))
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"need 1 <= MIN <= MAX, got {text!r}")
    return bounds


def _counts(args: argparse.Namespace) -> list[int]:
    counts = [int(x) for x in args.num_requests.split(",")]
    if min(counts) < 1:
        raise SystemExit(f"--num-requests must be >= 1, got {args.num_requests}")
    return counts


def _workload(args: argparse.Namespace, tokenizer: TextTokenizer | None = None) -> tuple[str, list[ChatRequest]]:
    """The workload named or saved in args; lengths measured with `tokenizer` when one is loaded."""
    if args.workload.endswith(".jsonl"):
        requests = load_workload(Path(args.workload))
        name = Path(args.workload).stem
    else:
        if tokenizer is None or args.tokenizer is not None:
            tokenizer = load_tokenizer(args.tokenizer or default_model_path())
        spec = WorkloadSpec(args.workload, max(_counts(args)), args.input_len, args.output_len, args.seed)
        requests, name = build_workload(spec, tokenizer), args.workload
    if args.save_workload is not None:
        save_workload(requests, args.save_workload)
    return name, requests


def _finish(args: argparse.Namespace, run: BenchRun) -> None:
    for level in run.levels:
        print_level(console, run, level)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        run.save(args.out)
        console.print(f"results: {args.out}")
    if args.plot is not None:
        from tokenmill.bench.plots import write_plots

        for path in write_plots(run, args.plot):
            console.print(f"plot: {path}")


def cmd_bench_serve(args: argparse.Namespace) -> int:
    base_url = args.base_url.rstrip("/")
    base_url = base_url if base_url.endswith("/v1") else f"{base_url}/v1"
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    target = Target(base_url, args.model or _first_model(base_url, api_key), api_key)
    workload, requests = _workload(args)
    slo = parse_slo(args.slo)
    if args.request_rate is not None:
        loads = [dict(request_rate=float(x)) for x in args.request_rate.split(",")]
    else:
        loads = [dict(concurrency=int(x)) for x in args.concurrency.split(",")]
    counts = _counts(args)
    if len(counts) not in (1, len(loads)):
        raise SystemExit(f"--num-requests gives {len(counts)} counts for {len(loads)} levels")
    levels = []
    with Progress(console=console, transient=True) as progress:
        for load, count in zip(loads, counts * len(loads) if len(counts) == 1 else counts):
            label = f"concurrency {load['concurrency']}" if "concurrency" in load else f"{load['request_rate']} req/s"
            task = progress.add_task(label, total=count)
            before = scrape(base_url, target.headers)
            seconds, records = asyncio.run(run_level(target, requests[:count], seed=args.seed,
                                                     on_done=lambda: progress.advance(task), **load))
            after = scrape(base_url, target.headers)
            levels.append(LevelResult(load.get("concurrency"), load.get("request_rate"), seconds, records, slo,
                                      after.since(before) if after else None))
    _finish(args, _run("serve", target.model, workload, base_url, levels))
    return 0


def _first_model(base_url: str, api_key: str | None) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{base_url}/models", headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def cmd_bench_offline(args: argparse.Namespace) -> int:
    llm = build_llm(args)
    workload, requests = _workload(args, llm.tokenizer)
    prompts = [llm.tokenizer.apply_chat_template(r.messages) for r in requests]
    params = [_offline_params(r) for r in requests]
    before = _engine_speculation(llm)
    start_wall, start = time.perf_counter(), time.monotonic()
    outputs = llm.generate(prompts, params)
    seconds = time.perf_counter() - start_wall
    after = _engine_speculation(llm)
    records = [RequestRecord(start=o.metrics.arrival_time - start, end=o.metrics.finished_time - start,
                             token_times=[o.metrics.first_token_time - start], prompt_tokens=len(o.prompt_token_ids),
                             cached_tokens=o.num_cached_tokens, output_tokens=len(o.outputs[0].token_ids),
                             text=o.outputs[0].text,
                             valid=None if r.response_format is None else follows_format(r.response_format,
                                                                                           o.outputs[0].text))
               for o, r in zip(outputs, requests)]  # fmt: skip
    level = LevelResult(len(requests), None, seconds, records, parse_slo(args.slo),
                        after.since(before) if after else None)
    _finish(args, _run("offline", model_name(args), workload, "in-process", [level]))
    return 0


def _offline_params(request: ChatRequest) -> SamplingParams:
    """As the server is asked: exactly output_len tokens, or under a response format until the grammar ends."""
    if request.response_format is None:
        return SamplingParams(max_tokens=request.output_len, temperature=0.0, ignore_eos=True)
    fields = StructuredFields(response_format=request.response_format).output_constraint()
    return SamplingParams(max_tokens=request.output_len, temperature=0.0,
                          structured_outputs=fields[0] if fields else None)


def _engine_speculation(llm) -> SpeculationCounts | None:
    stats = llm.engine.stats()
    if stats.speculative_method is None:
        return None
    return SpeculationCounts(stats.speculative_method, stats.spec_draft_tokens, stats.spec_accepted_tokens)


def cmd_bench_compare(args: argparse.Namespace) -> int:
    print_comparison(console, BenchRun.load(args.a), BenchRun.load(args.b), args.a.name, args.b.name)
    return 0


def _run(kind: str, model: str, workload: str, target: str, levels: list[LevelResult]) -> BenchRun:
    command = shlex.join(["tokenmill", *sys.argv[1:]])
    return BenchRun(kind, model, workload, target, datetime.datetime.now().isoformat(timespec="seconds"), command,
                    levels)
