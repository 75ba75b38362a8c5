"""Streaming past the context with attention sinks (StreamingLLM), on the default model (context 8,192).

One stream of --segments x 1,024 tokens of the bench corpus (Python's documentation) is scored,
segment by segment, three ways:
- in context: each segment with as much of the text before it as the context holds (8,192 tokens
  with the segment), recomputed for each segment: the model at its best;
- sinks: one pass over the whole stream with --sliding-window W --attention-sinks 4 (the
  first 4 tokens and the last W seen by every token; the KV between freed);
- window only: the same with no sinks (--attention-sinks 0), where StreamingLLM saw perplexity
  collapse once the first tokens leave the window.
Figures: perplexity per segment, and sinks' against in context. Then a --generate-token greedy
generation in the sinks mode, from a short prompt: its decode rate at the start and the end, and
the KV blocks held (min and max over its steps).

    PYTHONPATH=. python benchmarks/attention_sinks.py [--segments 20] [--window 1020] [--generate 20000]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import time

import torch

from tokenmill import LLM, SamplingParams
from tokenmill.bench.report import load_average_note, print_figures
from tokenmill.bench.workloads import tokenize_corpus
from tokenmill.eval.scoring import prompt_logprobs
from tokenmill.kernels.cpu_info import cpu_features, cpu_model

SEGMENT = 1024
SINKS = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--window", type=int, default=SEGMENT - SINKS, help="recent tokens kept besides the sinks")
    parser.add_argument("--generate", type=int, default=20000, help="tokens of the long generation (0: none)")
    return parser.parse_args()


def nll_rows(llm: LLM, tokens: list[int]) -> torch.Tensor:
    """Row i: the negative log-likelihood of tokens[i + 1] given tokens[: i + 1]."""
    logprobs = prompt_logprobs(llm.engine, tokens)
    return -logprobs.gather(1, torch.tensor(tokens[1:])[:, None])[:, 0].double()


def in_context(llm: LLM, stream: list[int], num_segments: int) -> list[float]:
    """Each segment's mean NLL with as much text before it as the context holds (one pass for the
    segments inside the context, then one each)."""
    context = llm.engine.max_model_len
    rows = nll_rows(llm, stream[:context])
    inside = (context - 1) // SEGMENT
    per_segment = [rows[s * SEGMENT : (s + 1) * SEGMENT].mean().item() for s in range(min(inside, num_segments))]
    for s in range(inside, num_segments):
        end = (s + 1) * SEGMENT + 1
        per_segment.append(nll_rows(llm, stream[end - context : end])[-SEGMENT:].mean().item())
    return per_segment


def streamed(window: int, sinks: int, stream: list[int], num_segments: int) -> list[float]:
    """Each segment's mean NLL in one streaming pass over the whole text."""
    rows = nll_rows(LLM(sliding_window=window, attention_sinks=sinks, enable_prefix_caching=False), stream)
    return [rows[s * SEGMENT : (s + 1) * SEGMENT].mean().item() for s in range(num_segments)]


def long_generation(window: int, num_tokens: int) -> dict[str, float]:
    """Greedy from a short prompt for num_tokens tokens: decode rates over the first and the last
    thousand tokens, and the blocks held."""
    llm = LLM(sliding_window=window, attention_sinks=SINKS, enable_prefix_caching=False)
    engine, kv = llm.engine, llm.engine.kv_manager
    request = engine.add_request(llm.tokenizer.encode("Once upon a time, in a village by a river,"),
                                 SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True))  # fmt: skip
    held, times, produced = [], [], 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            produced += sum(len(s.new_token_ids) for s in out.samples) if out.request_id == request else 0
        if engine.has_unfinished_requests():  # still generating: its blocks are held
            held.append(kv.num_blocks - kv.num_free_blocks)
            times.append((time.perf_counter(), produced))
    rate = lambda a, b: (b[1] - a[1]) / (b[0] - a[0])  # noqa: E731
    start = next(i for i, (_, n) in enumerate(times) if n >= 1)
    return {"tokens": produced, "first 1k tok/s": rate(times[start], times[start + 1000]),
            "last 1k tok/s": rate(times[-1001], times[-1]), "blocks min": min(held[start:]),
            "blocks max": max(held[start:])}  # fmt: skip


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    plain = LLM(enable_prefix_caching=False)
    stream = tokenize_corpus(plain.tokenizer).token_ids[: args.segments * SEGMENT + 1]
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores, "
          f"torch {torch.__version__}; SmolLM2-135M-Instruct, default mode; a stream of {len(stream)} tokens, "
          f"context {plain.engine.max_model_len}; window {args.window}, {SINKS} sinks")
    reference = in_context(plain, stream, args.segments)
    del plain
    sinks = streamed(args.window, SINKS, stream, args.segments)
    window_only = streamed(args.window, 0, stream, args.segments)
    rows, every = [], {}
    for s in range(args.segments):
        ppl = [math.exp(x[s]) for x in (reference, sinks, window_only)]
        rows.append([f"{s * SEGMENT + 1}-{(s + 1) * SEGMENT}", *(f"{p:.2f}" for p in ppl), f"{ppl[1] / ppl[0]:.3f}"])
    worst = max(math.exp(b - a) for a, b in zip(reference, sinks))
    every["sinks / in context, per segment"] = [math.exp(b - a) for a, b in zip(reference, sinks)]
    print_figures(["tokens", "in context", f"sinks ({SINKS} + {args.window})", f"window only ({args.window})",
                   "sinks / in context"], rows, every,
                  [f"worst segment, sinks against in context: {worst:.3f}x", load_average_note(load_before)])  # fmt: skip
    if args.generate:
        figures = long_generation(args.window, args.generate)
        print("\nlong generation: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in figures.items()))  # fmt: skip


if __name__ == "__main__":
    main()
