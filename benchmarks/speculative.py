"""Speculative decoding against plain decoding, side by side in one run, on the default model.

Single stream: the `repetitive` and `chat` workloads' requests one after another (greedy, the
benchmarks' seed 0), with each engine in turn, round after round; output tokens/s per engine
(time to first token included), medians over rounds, and each proposer's acceptance rate.
Concurrent: --concurrency `chat` requests at once, where speculation switches itself off
(disable_by_batch_size) but for the tail of the batch.

    python benchmarks/speculative.py [--rounds 3] [--requests 5] [--concurrency 32] [--draft-layers 6]
        [--methods plain,ngram] [--workloads repetitive] [--engine-args '--dtype float32 --quantization none']
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import time

from tokenmill import LLM, SamplingParams
from tokenmill.bench.chat_workloads import ChatRequest, WorkloadSpec, build_workload
from tokenmill.bench.report import load_average_note, markdown_table
from tokenmill.engine_args import add_engine_args, engine_options
from tokenmill.kernels.cpu_info import cpu_model

KV_CACHE_MEMORY = 768 * 2**20


def engines(draft_layers: int, methods: list[str], engine_args: str) -> dict[str, LLM]:
    options = argparse.ArgumentParser()
    add_engine_args(options)
    engine = {**engine_options(options.parse_args(shlex.split(engine_args))), "kv_cache_memory": KV_CACHE_MEMORY}
    configs = {
        "plain": None,
        "ngram": {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2},
        "draft": {"method": "draft", "draft_layers": draft_layers, "num_speculative_tokens": 3},
        "heads": {"method": "heads", "num_speculative_tokens": 3},
        # Lookup only on matches of two tokens or more: the heads guess better than a one-token match.
        "ngram_heads": {"method": "ngram_heads", "num_speculative_tokens": 3, "prompt_lookup_min": 2},
    }
    return {name: LLM(**{**engine, "speculative_config": spec}) for name, spec in configs.items() if name in methods}


def run(llm: LLM, requests: list[ChatRequest], concurrent: bool) -> tuple[float, int, int]:
    """Output tokens/s over the requests (all at once, or one after another), and the proposals
    made and accepted meanwhile."""
    params = [SamplingParams(max_tokens=r.output_len, temperature=0.0) for r in requests]
    stats = llm.engine.stats()
    before = (stats.spec_draft_tokens, stats.spec_accepted_tokens)
    start = time.perf_counter()
    if concurrent:
        outputs = llm.chat([r.messages for r in requests], params, use_tqdm=False)
    else:
        outputs = [llm.chat(r.messages, p, use_tqdm=False)[0] for r, p in zip(requests, params)]
    seconds = time.perf_counter() - start
    tokens = sum(len(out.outputs[0].token_ids) for out in outputs)
    stats = llm.engine.stats()
    after = (stats.spec_draft_tokens, stats.spec_accepted_tokens)
    return tokens / seconds, after[0] - before[0], after[1] - before[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5, help="single-stream requests per workload")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--draft-layers", type=int, default=6)
    parser.add_argument("--methods", default="plain,ngram,draft,heads,ngram_heads",
                        help="comma-separated; plain is always run")
    parser.add_argument("--workloads", default="repetitive,chat,concurrent", help="comma-separated")
    parser.add_argument("--engine-args", default="", help="engine options for every engine, e.g. '--dtype float32'")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    llms = engines(args.draft_layers, ["plain", *args.methods.split(",")], args.engine_args)
    tokenizer = llms["plain"].tokenizer
    # Outputs capped (repetitive asks up to 512 tokens, chat 256) to keep a round under ten minutes;
    # the self-draft, slower than plain decoding everywhere, sits out the long repetitive case.
    cases = {
        "repetitive": (build_workload(WorkloadSpec("repetitive", args.requests, output_len=(64, 256)), tokenizer), False),
        "chat": (build_workload(WorkloadSpec("chat", args.requests), tokenizer), False),
        f"chat x{args.concurrency}": (build_workload(WorkloadSpec("chat", args.concurrency, output_len=(32, 128)),
                                                     tokenizer), True),
    }
    chosen = args.workloads.split(",")
    cases = {case: value for case, value in cases.items() if ("concurrent" if value[1] else case) in chosen}
    for llm in llms.values():  # warm-up: kernels built, first allocations made
        run(llm, next(iter(cases.values()))[0][:1], False)
    tps = {(case, name): [] for case in cases for name in llms}
    counts = {(case, name): [0, 0] for case in cases for name in llms}
    for r in range(args.rounds):
        for case, (requests, concurrent) in cases.items():
            for name, llm in llms.items():
                if case == "repetitive" and name == "draft":
                    continue
                rate, proposed, accepted = run(llm, requests, concurrent)
                tps[case, name].append(rate)
                counts[case, name][0] += proposed
                counts[case, name][1] += accepted
                print(f"round {r + 1}: {case:14} {name:6} {rate:6.1f} tok/s, accepted {accepted}/{proposed}", flush=True)

    print(f"\n{cpu_model()}; {args.rounds} rounds, medians; engine args {args.engine_args!r}; "
          f"{load_average_note(load_before)}")
    header = ["workload", "engine", "output tok/s", "vs plain", "acceptance", "every round"]
    rows = []
    for case in cases:
        plain = statistics.median(tps[case, "plain"])
        for name in (name for name in llms if tps[case, name]):
            median = statistics.median(tps[case, name])
            proposed, accepted = counts[case, name]
            rows.append([case, name, f"{median:.1f}", f"{median / plain:.2f}x",
                         f"{accepted / proposed:.2f} of {proposed}" if proposed else "-",
                         " / ".join(f"{x:.1f}" for x in tps[case, name])])
    print("\n".join(markdown_table(header, rows, ["---", "---", "---:", "---:", "---:", "---:"])))


if __name__ == "__main__":
    main()
