"""Quantization: bytes, memory and speed each precision buys, and what it costs in quality.

For float32, bfloat16, int8 and int4 weights, the GGUF's own Q4_1 weights (`gguf`) and the int8
KV cache, in one run:
- weight bytes and KV bytes per token; the tokens a 256 MiB KV budget holds;
- resident memory: each precision's engine alone in a fresh process, after a short generation;
- single-stream decode (one request, 128 greedy tokens) and throughput with 32 concurrent chat
  requests (offline engine, 128 output tokens each), the precisions alternating round by round;
- perplexity, mean KL divergence and top-1 agreement against float32 (tokenmill eval quality's
  measure, 8 windows of 256 tokens of held-out prose).
Then it checks issue 6's thresholds and prints the table in Markdown for docs/BENCHMARKS.md.

    python benchmarks/quantization.py [--rounds 3] [--precisions float32,int8,...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from rich.console import Console

from tokenmill import LLM, SamplingParams
from tokenmill.bench.chat_workloads import WorkloadSpec, build_workload
from tokenmill.bench.report import command_line, load_average_note, markdown_table
from tokenmill.kernels.cpu_info import cpu_model
from tokenmill.eval.precisions import PRECISIONS, REFERENCE, parse_precisions
from tokenmill.eval.quality import evaluate, text_windows

console = Console()
KV_BUDGET = 256 * 2**20
ENGINE = dict(kv_cache_memory=1 * 2**30, enable_prefix_caching=False)  # rounds repeat one workload
SINGLE_STREAM_TOKENS = 128
CONCURRENT = 32


def resident_mib(precision: str) -> float:
    """VmRSS of a fresh process holding only this precision's engine (KV_BUDGET of cache)."""
    code = (
        "import json\nfrom tokenmill import LLM, SamplingParams\nfrom tokenmill.eval.precisions import PRECISIONS\n"
        f"llm = LLM(kv_cache_memory={KV_BUDGET}, **PRECISIONS[{precision!r}])\n"
        "llm.generate('Hello', SamplingParams(max_tokens=8), use_tqdm=False)\n"
        "rss = next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]\n"
        "print(json.dumps({'tokens': llm.engine.kv_manager.num_blocks * llm.engine.kv_manager.block_size,"
        " 'rss_kib': int(rss)}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def single_stream(llm: LLM, prompt: str) -> float:
    params = SamplingParams(max_tokens=SINGLE_STREAM_TOKENS, temperature=0.0, ignore_eos=True)
    llm.generate(prompt, SamplingParams(max_tokens=2), use_tqdm=False)  # warm: first calls compile nothing
    start = time.perf_counter()
    out = llm.generate(prompt, params, use_tqdm=False)[0]
    ttft = out.metrics.first_token_time - out.metrics.arrival_time
    return (len(out.outputs[0].token_ids) - 1) / (time.perf_counter() - start - ttft)


def concurrent_throughput(llm: LLM, seed: int) -> float:
    requests = build_workload(WorkloadSpec("chat", CONCURRENT, output_len=(128, 128), seed=seed), llm.tokenizer)
    prompts = [llm.tokenizer.apply_chat_template(r.messages) for r in requests]
    params = SamplingParams(max_tokens=128, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outputs) / (time.perf_counter() - start)


def checks(row: dict[str, dict]) -> list[str]:
    """Issue 6's acceptance thresholds, each as a PASS/FAIL line."""
    f32 = row[REFERENCE]
    tests = []
    if "int8" in row:
        r = row["int8"]
        tests += [("int8 weight bytes <= 1/2 of float32", r["weight_bytes"] <= f32["weight_bytes"] / 2),
                  ("int8 KL < 0.01", r["kl"] < 0.01), ("int8 decode faster than float32", r["decode"] > f32["decode"])]
    if "int4" in row:
        r = row["int4"]
        tests += [("int4 weight bytes <= 1/4 of float32", r["weight_bytes"] <= f32["weight_bytes"] / 4),
                  ("int4 KL < 0.1", r["kl"] < 0.1)]
        if "int8" in row:
            tests.append(("int4 decode faster than int8", r["decode"] > row["int8"]["decode"]))
    if "kv-int8" in row:
        r = row["kv-int8"]
        tests += [("int8 KV holds >= 1.8x the tokens", r["kv_tokens"] >= 1.8 * f32["kv_tokens"]),
                  ("int8 KV KL < 0.01", r["kl"] < 0.01)]
    return [f"{'PASS' if ok else 'FAIL'}: {name}" for name, ok in tests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", type=parse_precisions, default=list(PRECISIONS))
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    precisions = list(dict.fromkeys([REFERENCE, *args.precisions]))
    load = os.getloadavg()[0]

    console.print("resident memory, one fresh process per precision ...")
    memory = {p: resident_mib(p) for p in precisions}
    engines = {p: LLM(**ENGINE, **PRECISIONS[p]) for p in precisions}
    tokenizer = engines[REFERENCE].tokenizer
    console.print("quality against float32 ...")
    windows = text_windows(tokenizer, args.windows, 256)
    quality = {q.precision: q for q in evaluate(engines[REFERENCE].engine, {p: e.engine for p, e in engines.items()},
                                                windows)}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me a long story about a lighthouse."}])
    decode: dict[str, list[float]] = {p: [] for p in precisions}
    throughput: dict[str, list[float]] = {p: [] for p in precisions}
    for round_ in range(args.rounds):
        for p, llm in engines.items():
            console.print(f"round {round_ + 1}/{args.rounds}: {p} ...")
            decode[p].append(single_stream(llm, prompt))
            throughput[p].append(concurrent_throughput(llm, round_))

    row = {p: {
        "weight_bytes": quality[p].weight_bytes, "kv_bytes_per_token": quality[p].kv_bytes_per_token,
        "kv_tokens": memory[p]["tokens"], "rss_mib": memory[p]["rss_kib"] / 1024,
        "decode": statistics.median(decode[p]), "throughput": statistics.median(throughput[p]),
        "perplexity": quality[p].perplexity, "kl": quality[p].mean_kl, "top1": quality[p].top1_agreement,
    } for p in precisions}
    f32 = row[REFERENCE]
    header = ["precision", "weight MB", "vs f32", "KV B/token", "tokens in 256 MiB KV", "resident MiB",
              "decode tok/s", "vs f32", f"{CONCURRENT} concurrent tok/s", "vs f32", "perplexity", "KL vs f32",
              "top-1 vs f32"]
    rows = [[p, f"{r['weight_bytes'] / 1e6:.1f}", f"{r['weight_bytes'] / f32['weight_bytes']:.2f}",
             f"{r['kv_bytes_per_token']:.0f}", f"{r['kv_tokens']:,}", f"{r['rss_mib']:.0f}",
             f"{r['decode']:.1f}", f"{r['decode'] / f32['decode']:.2f}x",
             f"{r['throughput']:.1f}", f"{r['throughput'] / f32['throughput']:.2f}x",
             f"{r['perplexity']:.3f}", f"{r['kl']:.5f}", f"{r['top1']:.4f}"] for p, r in row.items()]

    def every_round(values: dict[str, list[float]]) -> str:
        return "; ".join(f"{p} " + ", ".join(f"{v:.1f}" for v in values[p]) for p in precisions)

    notes = [
        f"every round, decode tok/s: {every_round(decode)}",
        f"every round, {CONCURRENT} concurrent tok/s: {every_round(throughput)}",
        f"quality: {quality[REFERENCE].num_positions} scored positions in {len(windows)} windows of 256 tokens",
        f"{cpu_model()}; command {command_line()}; " + load_average_note(load),
        *checks(row),
    ]
    console.print("\n" + "\n".join([*markdown_table(header, rows), "", *notes]), markup=False, highlight=False,
                  soft_wrap=True)


if __name__ == "__main__":
    main()
