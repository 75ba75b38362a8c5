"""Multi-LoRA's cost: 32 requests at once spread over 4 adapters (8 each) in one engine, against
the same 32 requests on the base model alone, and against the 4 adapters served as 4
merged-weight engines one after another (each with its 8 requests), counted two ways: the
engines already running (serving time only), and each engine started for its turn and stopped
after it, as a device that holds one model at a time must. Offline engines, greedy, EOS ignored,
the same prompts; every engine serves the whole workload once before the timed rounds; rounds
alternate; medians.

The adapters are made with peft on the default model (rank 16, every target layer, random A and
B: their speed does not depend on what they learned); merged engines load peft's
merge_and_unload() weights from a Hugging Face folder. All engines run with unquantized weights
(--quantization none) so that the merged ones compare like for like, and without prefix caching
(the rounds repeat the prompts). The base model serving the 32 requests 8 at a time shows how much
batching alone can gain on this machine: serving adapters together cannot beat that ratio.

    PYTHONPATH=. python benchmarks/lora.py [--rounds 3] [--output-len 64]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from tests.lora.adapters import TARGETS, make_adapter
from tokenmill import LLM, SamplingParams
from tokenmill.bench.report import load_average_note, print_figures
from tokenmill.bench.workloads import offline_workload
from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.lora.request import LoRARequest
from tokenmill.model.default import default_model_path

NUM_ADAPTERS, PER_ADAPTER = 4, 8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    return parser.parse_args()


def merged_folder(adapter_model, tokenizer_source: Path, path: Path) -> Path:
    """peft's merged weights as a Hugging Face folder (written by hand: transformers will not save a
    model it read from a GGUF file)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    model = adapter_model.merge_and_unload()
    path.mkdir(parents=True, exist_ok=True)
    tied = model.config.tie_word_embeddings
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(weights, str(path / "model.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (path / "config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(str(tokenizer_source.parent), gguf_file=tokenizer_source.name).save_pretrained(str(path))
    return path


def timed(llm: LLM, prompts: list, params: SamplingParams, lora: list | None = None) -> tuple[float, int]:
    start = time.perf_counter()
    outs = llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs)


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    root, gguf = Path(tempfile.mkdtemp()), default_model_path()
    options = dict(quantization="none", max_num_seqs=64, enable_prefix_caching=False)  # rounds repeat the prompts
    requests, merged = [], []
    for i in range(NUM_ADAPTERS):
        peft_model = make_adapter(gguf, root / f"adapter{i}", seed=100 + i, rank=args.rank, targets=TARGETS)
        requests.append(LoRARequest(f"adapter{i}", i + 1, root / f"adapter{i}"))
        merged.append(merged_folder(peft_model, gguf, root / f"merged{i}"))
    base = LLM(**options)
    lora = LLM(enable_lora=True, max_loras=NUM_ADAPTERS, max_lora_rank=args.rank, **options)
    engines = [LLM(str(path), **options) for path in merged]
    workload = offline_workload(base.tokenizer, num_requests=NUM_ADAPTERS * PER_ADAPTER, min_input_len=100,
                                max_input_len=300, output_len=args.output_len)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in workload]
    params = SamplingParams(max_tokens=args.output_len, temperature=0, ignore_eos=True)
    adapters = [requests[i % NUM_ADAPTERS] for i in range(len(prompts))]
    for llm in (base, lora, *engines):  # first-call and capture costs out of the figures
        llm.generate(prompts, params, lora_request=adapters if llm is lora else None, use_tqdm=False)
    tps: dict[str, list[float]] = {"base": [], "lora": [], "merged": [], "merged_started": [], "base_in_turn": []}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds} ...", flush=True)
        seconds, tokens = timed(base, prompts, params)
        tps["base"].append(tokens / seconds)
        seconds, tokens = timed(lora, prompts, params, adapters)
        tps["lora"].append(tokens / seconds)
        # the ceiling of serving adapters together: the base model's 32 requests at once against 8 at a time
        turns = [timed(base, prompts[i::NUM_ADAPTERS], params) for i in range(NUM_ADAPTERS)]
        tps["base_in_turn"].append(sum(t for _, t in turns) / sum(s for s, _ in turns))
        total_s = total_tokens = 0
        for i, engine in enumerate(engines):
            mine = [p for p, a in zip(prompts, adapters) if a is requests[i]]
            seconds, tokens = timed(engine, mine, params)
            total_s, total_tokens = total_s + seconds, total_tokens + tokens
        tps["merged"].append(total_tokens / total_s)
        total_s = 0
        for i, path in enumerate(merged):
            start = time.perf_counter()
            engine = LLM(str(path), **options)
            timed(engine, [p for p, a in zip(prompts, adapters) if a is requests[i]], params)
            del engine
            gc.collect()
            total_s += time.perf_counter() - start
        tps["merged_started"].append(total_tokens / total_s)
    median = {k: statistics.median(v) for k, v in tps.items()}
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
          f"{len(prompts)} requests (100-300 prompt tokens, {args.output_len} output tokens), rank {args.rank}")
    rows = [
        ["base model alone, 32 requests (output tok/s)", f"{median['base']:.1f}", ""],
        ["4 adapters x 8 requests in one engine", f"{median['lora']:.1f}", ""],
        ["4 merged-weight engines one after another, already running", f"{median['merged']:.1f}", ""],
        ["4 merged-weight engines one after another, each started for its turn", f"{median['merged_started']:.1f}",
         ""],
        ["adapters / base", f"{median['lora'] / median['base']:.3f}", "at least 0.8"],
        ["base model: 32 requests at once / 8 at a time, 4 turns (no adapters)",
         f"{median['base'] / median['base_in_turn']:.2f}x", ""],
        ["adapters / merged engines in turn, already running", f"{median['lora'] / median['merged']:.2f}x",
         "at least 3x"],
        ["adapters / merged engines in turn, each started", f"{median['lora'] / median['merged_started']:.2f}x",
         "at least 3x"],
    ]
    print_figures(["figure", "value", "issue 17's target"], rows, tps, [load_average_note(load_before)])


if __name__ == "__main__":
    main()
