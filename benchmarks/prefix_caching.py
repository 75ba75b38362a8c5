"""Prefix caching on the `shared-prefix` workload: the offline engine with the cache and without.

64 chat requests share one long system prompt (1,500 tokens of the Python documentation) and
differ in a short question; each round draws a different system prompt (seed = round), so a
round never finds the previous round's blocks. The two engines alternate; medians are quoted.
Then a two-turn chat shows the second turn's cached tokens, and the pools are checked: every
block free, or cached with no reference.

    python benchmarks/prefix_caching.py [--rounds 2] [--num-requests 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from rich.console import Console
from rich.table import Table

from tokenmill import LLM, SamplingParams
from tokenmill.bench.chat_workloads import WorkloadSpec, build_workload
from tokenmill.bench.report import command_line, load_average_note, markdown_table
from tokenmill.kernels.cpu_info import cpu_model

console = Console()


def run_round(llm: LLM, seed: int, num_requests: int) -> dict[str, float]:
    requests = build_workload(WorkloadSpec("shared-prefix", num_requests, seed=seed), llm.tokenizer)
    prompts = [llm.tokenizer.apply_chat_template(r.messages) for r in requests]
    params = [SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True) for r in requests]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    output_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "mean TTFT (s)": statistics.fmean(o.metrics.first_token_time - o.metrics.arrival_time for o in outputs),
        "output tok/s": output_tokens / seconds,
        "total tok/s": (prompt_tokens + output_tokens) / seconds,
        "cached prompt tokens (%)": 100 * sum(o.num_cached_tokens for o in outputs) / prompt_tokens,
        "seconds": seconds,
    }


def two_turn_chat(llm: LLM) -> tuple[int, int, int]:
    """(turn 2's prompt tokens, of which cached, turn 1's prompt + reply tokens)."""
    greedy = SamplingParams(max_tokens=64, temperature=0.0)
    turn1 = [{"role": "user", "content": "Explain what a Python generator is, with an example."}]
    first = llm.chat(turn1, greedy, use_tqdm=False)[0]
    turn2 = turn1 + [{"role": "assistant", "content": first.outputs[0].text},
                     {"role": "user", "content": "Now explain how it differs from a list."}]
    second = llm.chat(turn2, greedy, use_tqdm=False)[0]
    return len(second.prompt_token_ids), second.num_cached_tokens, len(first.prompt_token_ids) + len(
        first.outputs[0].token_ids)


def every_round(name: str, runs: list[dict[str, float]]) -> str:
    ttft = ", ".join(f"{r['mean TTFT (s)']:.2f}" for r in runs)
    tps = ", ".join(f"{r['output tok/s']:.1f}" for r in runs)
    return f"{name} mean TTFT {ttft} s, output {tps} tok/s"


def pool_check(llm: LLM) -> str:
    bm = llm.engine.kv_manager
    assert not llm.engine.has_unfinished_requests()
    assert all(count == 0 for count in bm.ref_counts) and bm.num_free_blocks == bm.num_blocks
    cached = len(bm.prefix_cache) if bm.prefix_cache is not None else 0
    return f"{bm.num_blocks} blocks: all free, {cached} of them still cached, every reference count 0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-requests", type=int, default=64)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    engines = {"cache off": LLM(enable_prefix_caching=False), "cache on": LLM()}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    for round_ in range(args.rounds):
        for name, llm in engines.items():
            console.print(f"round {round_ + 1}/{args.rounds}: {name} ...")
            results[name].append(run_round(llm, round_, args.num_requests))
    metrics = list(results["cache off"][0])
    median = {name: {m: statistics.median(r[m] for r in runs) for m in metrics} for name, runs in results.items()}
    rows = []
    for m in metrics:
        off, on = median["cache off"][m], median["cache on"][m]
        lower_is_better = m in ("mean TTFT (s)", "seconds")
        ratio = f"{off / on:.1f}x lower" if lower_is_better else (f"{on / off:.1f}x" if off else "")
        rows.append([m, f"{off:.2f}", f"{on:.2f}", ratio])
    table = Table(title="Prefix caching, shared-prefix workload (medians)")
    for column in ("metric", "cache off", "cache on", "on vs off"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    prompt, cached, turn1 = two_turn_chat(engines["cache on"])
    notes = [
        "every round: " + "; ".join(every_round(name, runs) for name, runs in results.items()),
        f"two-turn chat: turn 2 has {prompt} prompt tokens, {cached} of them cached "
        f"(turn 1's prompt and reply: {turn1} tokens)",
        "after the benchmark, cache on: " + pool_check(engines["cache on"]),
        "after the benchmark, cache off: " + pool_check(engines["cache off"]),
        f"{cpu_model()}; command {command_line()}; " + load_average_note(load),
    ]
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
    console.print("\n" + "\n".join([*markdown_table(["metric", "cache off", "cache on", "on vs off"], rows), "",
                                    *notes]), markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
