"""Offline throughput: tokenmill against Hugging Face transformers on the same GGUF weights.

A fixed workload of real English prompts (100-600 tokens, 128 greedy output tokens each, EOS
ignored) goes through tokenmill in one `llm.generate` call, and through transformers' `generate`
one request at a time. Both also run one medium prompt alone, for time to first token and
single-stream decode speed. The machine is shared and noisy, so the two engines alternate over
several rounds and the medians are compared.

    python benchmarks/offline_throughput.py [--rounds 3] [--hf-requests 8] [--num-requests 64]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tokenmill.bench.report import command_line, load_average_note, markdown_table
from tokenmill.kernels.cpu_info import cpu_model
from tokenmill.bench.workloads import TextTokenizer, WorkloadRequest, offline_workload, spread_subset
from tokenmill.model.default import default_model_path

console = Console()
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Throughput:
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    outputs: list[list[int]]  # generated ids, in the order of the requests timed

    @property
    def output_tps(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def total_tps(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.seconds


@dataclass(frozen=True)
class SingleStream:
    ttft_s: float
    decode_tps: float

    @property
    def ttft_ms(self) -> float:
        return 1000 * self.ttft_s


@dataclass(frozen=True)
class EngineResults:
    rounds: list[Throughput]  # one offline run per round
    single: SingleStream | None = None

    @property
    def offline(self) -> Throughput | None:
        """The median round by output tokens/s."""
        if not self.rounds:
            return None
        return sorted(self.rounds, key=lambda t: t.output_tps)[len(self.rounds) // 2]


@dataclass(frozen=True)
class Workloads:
    """Every prompt starts at a different paragraph, so a prefix cache cannot carry work over."""

    offline: list[WorkloadRequest]
    hf_offline: list[WorkloadRequest]  # the subset transformers runs one at a time
    single: list[WorkloadRequest]  # one prompt per single-stream repeat
    warmup: WorkloadRequest


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--min-input-len", type=int, default=100)
    parser.add_argument("--max-input-len", type=int, default=600)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--hf-requests", type=int, default=8,
                        help="how many of the requests transformers runs, evenly spaced by prompt length")
    parser.add_argument("--single-input-len", type=int, default=350, help="prompt length of the single-stream runs")
    parser.add_argument("--repeats", type=int, default=3, help="single-stream runs per engine (the median is kept)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="offline runs per engine, alternating between the engines (the median is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("tokenmill", "transformers"), default=None, help="run one engine")
    parser.add_argument("--quantization", default="none", help="tokenmill's weights (transformers: float)")
    parser.add_argument("--kv-cache-dtype", default="auto", help="tokenmill's KV cache")
    args = parser.parse_args()
    if args.output_len < 2:
        parser.error("--output-len must be >= 2 to measure decode speed")
    return args


def build_workloads(args: argparse.Namespace, tokenizer: TextTokenizer) -> Workloads:
    offline = offline_workload(tokenizer, args.num_requests, args.min_input_len, args.max_input_len,
                               args.output_len, args.seed)
    single = offline_workload(tokenizer, args.repeats, args.single_input_len, args.single_input_len,
                              args.output_len, args.seed, passage_offset=args.num_requests)
    warmup = offline_workload(tokenizer, 1, 32, 32, 4, args.seed, passage_offset=args.num_requests + args.repeats)
    return Workloads(offline, spread_subset(offline, args.hf_requests), single, warmup[0])


def load_hf_tokenizer(model_path: Path) -> TextTokenizer:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)


def load_hf_model(model_path: Path, dtype: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()  # dequantizing a GGUF and greedy-with-defaults both warn at length
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=getattr(torch, dtype)
    )
    console.print(f"transformers: loaded in {time.perf_counter() - start:.1f} s")
    return model.eval()


@torch.inference_mode()
def hf_generate(model: torch.nn.Module, prompt_token_ids: list[int], num_tokens: int) -> tuple[float, list[int]]:
    """Seconds for one greedy generate of exactly num_tokens tokens, and the tokens."""
    input_ids = torch.tensor([prompt_token_ids])
    start = time.perf_counter()
    output = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=num_tokens,
        min_new_tokens=num_tokens,  # transformers' way to ignore EOS
        do_sample=False,
        pad_token_id=model.config.eos_token_id,
    )
    return time.perf_counter() - start, output[0, len(prompt_token_ids):].tolist()


def hf_offline(model: torch.nn.Module, requests: list[WorkloadRequest]) -> Throughput:
    timed = [hf_generate(model, r.prompt_token_ids, r.output_len) for r in requests]
    return Throughput(
        num_requests=len(requests),
        prompt_tokens=sum(len(r.prompt_token_ids) for r in requests),
        output_tokens=sum(len(ids) for _, ids in timed),
        seconds=sum(seconds for seconds, _ in timed),
        outputs=[ids for _, ids in timed],
    )


def hf_single_stream(model: torch.nn.Module, requests: list[WorkloadRequest]) -> SingleStream:
    # generate with one new token is prefill plus one sampling step: the time to first token.
    first = statistics.median(hf_generate(model, r.prompt_token_ids, 1)[0] for r in requests)
    full = statistics.median(hf_generate(model, r.prompt_token_ids, r.output_len)[0] for r in requests)
    return SingleStream(ttft_s=first, decode_tps=(requests[0].output_len - 1) / (full - first))


def load_tokenmill(args: argparse.Namespace):  # -> tokenmill.LLM
    from tokenmill import LLM

    start = time.perf_counter()
    # Every round sends the same prompts: without this, rounds after the first would find them cached.
    llm = LLM(model=args.model, dtype=args.dtype, seed=args.seed, enable_prefix_caching=False,
              quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype)
    console.print(f"tokenmill: loaded in {time.perf_counter() - start:.1f} s")
    return llm


def tokenmill_generate(llm, requests: list[WorkloadRequest]) -> list:  # -> list[RequestOutput]
    from tokenmill import SamplingParams

    params = SamplingParams(max_tokens=requests[0].output_len, temperature=0.0, ignore_eos=True)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    return llm.generate(prompts, params, use_tqdm=False)


def tokenmill_offline(llm, requests: list[WorkloadRequest]) -> Throughput:
    start = time.perf_counter()
    outputs = tokenmill_generate(llm, requests)
    seconds = time.perf_counter() - start
    generated = [list(o.outputs[0].token_ids) for o in outputs]
    return Throughput(
        num_requests=len(requests),
        prompt_tokens=sum(len(r.prompt_token_ids) for r in requests),
        output_tokens=sum(len(ids) for ids in generated),
        seconds=seconds,
        outputs=generated,
    )


def tokenmill_single_stream(llm, requests: list[WorkloadRequest]) -> SingleStream:
    outputs = [tokenmill_generate(llm, [r])[0] for r in requests]
    ttft = statistics.median(o.metrics.first_token_time - o.metrics.arrival_time for o in outputs)
    decode_tps = statistics.median(
        (len(o.outputs[0].token_ids) - 1) / (o.metrics.finished_time - o.metrics.first_token_time) for o in outputs
    )
    return SingleStream(ttft_s=ttft, decode_tps=decode_tps)


def run_alternating(args: argparse.Namespace, workloads: Workloads) -> tuple[EngineResults, EngineResults]:
    """Both engines loaded, then each offline round and each single-stream prompt runs on one
    engine right after the other, so that a slow spell of the machine hits both alike."""
    engines = {}
    if args.only != "transformers":
        engines["tokenmill"] = (load_tokenmill(args), tokenmill_generate, tokenmill_offline, tokenmill_single_stream)
    if args.only != "tokenmill":
        engines["transformers"] = (load_hf_model(args.model, args.dtype), hf_warmup, hf_offline, hf_single_stream)
    rounds: dict[str, list[Throughput]] = {name: [] for name in engines}
    for name, (engine, warmup, _, _) in engines.items():
        warmup(engine, [workloads.warmup])
    for i in range(args.rounds):
        order = list(engines) if i % 2 == 0 else list(reversed(engines))  # neither always goes first
        for name in order:
            engine, _, offline, _ = engines[name]
            requests = workloads.offline if name == "tokenmill" else workloads.hf_offline
            console.print(f"round {i + 1}/{args.rounds}: {name}, {len(requests)} requests ...")
            rounds[name].append(offline(engine, requests))
    results = {}
    for name, (engine, _, _, single_stream) in engines.items():
        console.print(f"{name}: single stream x{len(workloads.single)} ...")
        results[name] = EngineResults(rounds[name], single_stream(engine, workloads.single))
    empty = EngineResults([])
    return results.get("tokenmill", empty), results.get("transformers", empty)


def hf_warmup(model: torch.nn.Module, requests: list[WorkloadRequest]) -> None:
    for r in requests:
        hf_generate(model, r.prompt_token_ids, r.output_len)


Row = tuple[str, str, str, str]


def results_rows(tm: EngineResults, hf: EngineResults, args: argparse.Namespace) -> list[Row]:
    def offline(result: EngineResults, name: str) -> float | None:
        return None if result.offline is None else getattr(result.offline, name)

    def single(result: EngineResults, name: str) -> float | None:
        return None if result.single is None else getattr(result.single, name)

    def both(get, name: str) -> tuple[float | None, float | None]:
        return get(tm, name), get(hf, name)

    return [
        _row("requests timed", *both(offline, "num_requests"), "d"),
        _row("prompt tokens", *both(offline, "prompt_tokens"), "d"),
        _row("output tokens", *both(offline, "output_tokens"), "d"),
        _row("time (s)", *both(offline, "seconds"), ".1f"),
        _row(f"output tokens/s (median of {args.rounds} rounds)", *both(offline, "output_tps"), ".1f",
             higher_is_better=True),
        _row("output tokens/s, every round", *(_all_rounds(r) for r in (tm, hf)), "s"),
        _row("total tokens/s (prompt+output)", *both(offline, "total_tps"), ".1f", higher_is_better=True),
        _row(f"TTFT, one {args.single_input_len}-token prompt (ms)", *both(single, "ttft_ms"), ".0f",
             higher_is_better=False),
        _row("decode tokens/s, single stream", *both(single, "decode_tps"), ".1f", higher_is_better=True),
    ]


def _all_rounds(result: EngineResults) -> str | None:
    return ", ".join(f"{t.output_tps:.1f}" for t in result.rounds) or None


def _row(name: str, tm: float | None, hf: float | None, fmt: str, higher_is_better: bool | None = None) -> Row:
    def cell(value: float | None) -> str:
        return "-" if value is None else format(value, fmt)

    if higher_is_better is None or tm is None or hf is None:
        return name, cell(tm), cell(hf), ""
    return name, cell(tm), cell(hf), f"{tm / hf if higher_is_better else hf / tm:.2f}x"


def greedy_agreement(tm: Throughput, hf: Throughput, workloads: Workloads) -> str:
    """How many requests both engines ran came out token-for-token identical: a sanity check that
    both did the same work, not a correctness test (batching changes float summation order)."""
    tm_outputs = [tm.outputs[workloads.offline.index(r)] for r in workloads.hf_offline]
    return f"{sum(a == b for a, b in zip(tm_outputs, hf.outputs))}/{len(tm_outputs)}"


def notes(args: argparse.Namespace, hf: EngineResults, agreement: str | None, load_before: float) -> list[str]:
    lines = [
        f"workload: {args.num_requests} requests, prompts of {args.min_input_len}-{args.max_input_len} tokens of "
        f"English prose, {args.output_len} greedy output tokens each (EOS ignored), seed {args.seed}",
    ]
    if hf.offline is not None and hf.offline.num_requests < args.num_requests:
        lines.append(
            f"transformers ran {hf.offline.num_requests} of the {args.num_requests} requests, evenly spaced by "
            "prompt length, one at a time: a one-at-a-time rate does not depend on how many requests are timed "
            f"(--hf-requests {args.num_requests} runs them all)"
        )
    if agreement is not None:
        lines.append(f"identical greedy outputs on the requests both engines ran: {agreement}")
    lines.append(
        f"single stream: median over {args.repeats} different {args.single_input_len}-token prompts (so no "
        f"prefix cache helps), {args.output_len} output tokens; transformers TTFT = generate with 1 new token, "
        f"decode = {args.output_len - 1} tokens / (time for {args.output_len} - time for 1)"
    )
    lines.append(load_average_note(load_before))
    return lines


def print_table(rows: list[Row], notes: list[str]) -> None:
    table = Table(title="Offline throughput: tokenmill vs transformers")
    table.add_column("metric")
    for name in ("tokenmill", "transformers", "tokenmill speed-up"):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for note in notes:
        console.print(f"[dim]{note}[/dim]")


def print_markdown(rows: list[Row], args: argparse.Namespace) -> None:
    import transformers

    environment = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": args.dtype,
        "model": args.model.name,
        "command": command_line(),
    }
    lines = [
        *markdown_table(list(environment), [environment.values()], ["---"] * len(environment)),
        "",
        *markdown_table(["metric", "tokenmill", "transformers", "tokenmill speed-up"], rows),
    ]
    console.print("\n" + "\n".join(lines), markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    args = parse_args()
    args.model = args.model or default_model_path()
    load_before = os.getloadavg()[0]
    workloads = build_workloads(args, load_hf_tokenizer(args.model))
    tm, hf = run_alternating(args, workloads)
    agreement = None
    if tm.offline is not None and hf.offline is not None:
        agreement = greedy_agreement(tm.offline, hf.offline, workloads)
    rows = results_rows(tm, hf, args)
    print_table(rows, notes(args, hf, agreement, load_before))
    print_markdown(rows, args)


if __name__ == "__main__":
    main()
