"""Tensor parallelism's cost on this machine: the default model (float32, unquantized) in one
process (with captured steps, and eager as tensor-parallel steps run) and split over 3 ranks (its
9 query and 3 KV heads 3 ways), 8 requests decoding together.
Per decode step: wall time, the part rank 0 spends in collectives (the all-reduces after attention
and MLP, the logits' all-gather; waiting for slower ranks counts there), the rest as compute; and
the bytes rank 0's collectives carry per token. Medians over rounds.

On a machine of two cores, splitting cannot add compute: the ranks share the cores, so this
measures what tensor parallelism costs, not what it gains on several devices.

    PYTHONPATH=. python benchmarks/tensor_parallel.py [--rounds 3] [--sizes 1,3] [--output-len 64]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import time

from tokenmill import LLM, SamplingParams
from tokenmill.bench.report import load_average_note, print_figures
from tokenmill.kernels.cpu_info import cpu_features, cpu_model

PROMPTS = [f"Write a short story about a {thing}." for thing in
           ("robot", "lighthouse", "dragon", "river", "clock", "garden", "violin", "comet")]  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,3", help="tensor-parallel sizes, comma-separated")
    parser.add_argument("--output-len", type=int, default=64)
    return parser.parse_args()


def measure(llm: LLM, output_len: int) -> dict[str, float]:
    """One round: decode steps' wall and collective time, bytes per token, output tokens/s."""
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    chat = llm.tokenizer.apply_chat_template
    prompts = [llm.tokenizer.encode(chat([{"role": "user", "content": p}], add_generation_prompt=True)) for p in PROMPTS]
    engine, stats = llm.engine, llm.engine.runner.model.tp.stats
    for prompt in prompts:
        engine.add_request(prompt, params)
    while any(not r.seqs[0].num_output_tokens for r in engine.requests.values()):
        engine.step()  # the prefills, out of the figures
    steps, calls, sent, comm, start = 0, stats.calls, stats.bytes, stats.seconds, time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    wall = time.perf_counter() - start
    tokens = steps * len(prompts)
    return {"step_ms": 1e3 * wall / steps, "comm_ms": 1e3 * (stats.seconds - comm) / steps,
            "bytes_per_token": (stats.bytes - sent) / tokens, "calls_per_step": (stats.calls - calls) / steps,
            "tok_s": tokens / wall}  # fmt: skip


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict[str, float]]] = {}
    configs = [(int(s), eager) for s in args.sizes.split(",") for eager in ((False, True) if s == "1" else (False,))]
    for size, eager in configs:
        llm = LLM(dtype="float32", quantization="none", kv_cache_memory=256 * 2**20, tensor_parallel_size=size,
                  enforce_eager=eager)
        measure(llm, 8)  # first-call costs
        results[f"TP={size}{' eager' if eager else ''}"] = [measure(llm, args.output_len) for _ in range(args.rounds)]
        llm.engine.shutdown()
        del llm
        gc.collect()
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
          f"SmolLM2-135M-Instruct float32, {len(PROMPTS)} requests decoding {args.output_len} tokens together")
    rows, every = [], {}
    for name, runs in results.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        every.update({f"{name} step ms": [run["step_ms"] for run in runs]})
        rows.append([name, f"{median['step_ms']:.1f}", f"{median['comm_ms']:.1f}",
                     f"{median['step_ms'] - median['comm_ms']:.1f}", f"{median['calls_per_step']:.0f}",
                     f"{median['bytes_per_token']:.0f}", f"{median['tok_s']:.1f}"])  # fmt: skip
    print_figures(["configuration", "decode step (ms)", "in collectives (ms)", "computing (ms)", "collectives a step",
                   "collective bytes per token (rank 0)", "output tok/s"], rows, every,
                  [load_average_note(load_before)])  # fmt: skip


if __name__ == "__main__":
    main()
