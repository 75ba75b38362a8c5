"""Tensor and pipeline parallelism's cost on this machine: the default model (float32,
unquantized) in one process (with captured steps, and eager as split steps run), split over 3
tensor-parallel ranks (its 9 query and 3 KV heads 3 ways), over 2 pipeline stages (15 layers
each, two micro-batches in flight), and both (6 ranks); 8 requests decoding together.
Per decode round (every request gains a token): wall time, the part rank 0 spends in collectives
(the all-reduces after attention and MLP, the logits' all-gather; waiting for slower ranks counts
there), the part it waits for later pipeline stages' outputs, the rest as its compute; and the
bytes rank 0 sends per token (collectives' payloads, activations to the next stage). Medians
over rounds.

On a machine of two cores, splitting cannot add compute: the ranks share the cores, so this
measures what parallelism costs, not what it gains on several devices.

    PYTHONPATH=. python benchmarks/tensor_parallel.py [--rounds 3] [--configs 1,3,1x2,3x2] [--output-len 64]
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
    parser.add_argument("--configs", default="1,3,1x2,3x2",
                        help="TP or TPxPP sizes, comma-separated (1 runs captured and eager)")
    parser.add_argument("--output-len", type=int, default=64)
    return parser.parse_args()


def measure(llm: LLM, output_len: int) -> dict[str, float]:
    """One round: decode rounds' wall, collective and pipeline-wait time, bytes per token, output tokens/s."""
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    chat = llm.tokenizer.apply_chat_template
    prompts = [llm.tokenizer.encode(chat([{"role": "user", "content": p}], add_generation_prompt=True)) for p in PROMPTS]
    engine, tp, pp = llm.engine, llm.engine.runner.model.tp.stats, llm.engine.runner.pp.stats
    waits = timed(engine.executor, "take_output")
    for prompt in prompts:
        engine.add_request(prompt, params)
    while any(not r.seqs[0].num_output_tokens for r in engine.requests.values()):
        engine.step()  # the prefills, out of the figures
    rounds = min(r.seqs[0].num_output_tokens for r in engine.requests.values())
    calls, sent, comm, wait, start = tp.calls, tp.bytes + pp.bytes, tp.seconds, sum(waits), time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
    wall = time.perf_counter() - start
    rounds = output_len - rounds
    tokens = rounds * len(prompts)
    return {"round_ms": 1e3 * wall / rounds, "comm_ms": 1e3 * (tp.seconds - comm) / rounds,
            "wait_ms": 1e3 * (sum(waits) - wait) / rounds, "bytes_per_token": (tp.bytes + pp.bytes - sent) / tokens,
            "calls_per_round": (tp.calls - calls) / rounds, "tok_s": tokens / wall}  # fmt: skip


def timed(obj: object, method: str) -> list[float]:
    """Wraps obj.method to record the seconds of each call in the returned list."""
    inner, seconds = getattr(obj, method), []

    def wrapper(*args):
        start = time.perf_counter()
        try:
            return inner(*args)
        finally:
            seconds.append(time.perf_counter() - start)

    setattr(obj, method, wrapper)
    return seconds


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict[str, float]]] = {}
    configs = [(c, eager) for c in args.configs.split(",") for eager in ((False, True) if c == "1" else (False,))]
    for config, eager in configs:
        tp, _, pp = config.partition("x")
        llm = LLM(dtype="float32", quantization="none", kv_cache_memory=256 * 2**20, tensor_parallel_size=int(tp),
                  pipeline_parallel_size=int(pp or 1), enforce_eager=eager)
        measure(llm, 8)  # first-call costs
        name = f"TP={tp}" + (f" x PP={pp}" if pp else "") + (" eager" if eager else "")
        results[name] = [measure(llm, args.output_len) for _ in range(args.rounds)]
        llm.engine.shutdown()
        del llm
        gc.collect()
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
          f"SmolLM2-135M-Instruct float32, {len(PROMPTS)} requests decoding {args.output_len} tokens together")
    rows, every = [], {}
    for name, runs in results.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        every.update({f"{name} round ms": [run["round_ms"] for run in runs]})
        computing = median["round_ms"] - median["comm_ms"] - median["wait_ms"]
        rows.append([name, f"{median['round_ms']:.1f}", f"{median['comm_ms']:.1f}", f"{median['wait_ms']:.1f}",
                     f"{computing:.1f}", f"{median['calls_per_round']:.0f}", f"{median['bytes_per_token']:,.0f}",
                     f"{median['tok_s']:.1f}"])  # fmt: skip
    print_figures(["configuration", "decode round (ms)", "in collectives (ms)", "waiting for later stages (ms)",
                   "computing (ms)", "collectives a round", "bytes sent per token (rank 0)", "output tok/s"], rows,
                  every, [load_average_note(load_before)])  # fmt: skip


if __name__ == "__main__":
    main()
