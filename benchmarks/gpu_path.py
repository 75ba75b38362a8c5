"""The GPU path's figures (issue 29), in one run on whatever device the engine picks: the
single-stream decode step against its floor (the weights' bytes at the device's measured copy
bandwidth), output tokens/s of the offline workload (64 requests at default settings; 256 with
max_num_seqs=256 and max_num_batched_tokens=8192), and the time to first token of a ~300-token
prompt alone. Each figure is the median of --repeats runs; every run is printed.

    python benchmarks/gpu_path.py [--dtype auto] [--quantization none] [--repeats 3] [--small]

--small shrinks every workload (a smoke run on the CPU).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

from tokenmill import LLM, SamplingParams
from tokenmill.bench.report import print_figures
from tokenmill.bench.workloads import offline_workload
from tokenmill.eval.quality import weight_bytes
from tokenmill.kernels.cpu_info import cpu_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="tiny workloads, to check the script runs")
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_gb_s(device: torch.device) -> float:
    """Read + write bandwidth of a large device-to-device copy, the decode step's floor's rate."""
    source = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    synchronize(device)
    start, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        target.copy_(source)
    synchronize(device)
    return 2 * source.nbytes * repeats / (time.perf_counter() - start) / 1e9


def decode_step_ms(llm: LLM, output_len: int) -> float:
    out = llm.generate(["The history of the printing press"], SamplingParams(max_tokens=output_len, temperature=0,
                                                                            ignore_eos=True), use_tqdm=False)[0]
    return 1000 * (out.metrics.finished_time - out.metrics.first_token_time) / (output_len - 1)


def throughput(llm: LLM, num_requests: int, output_len: int) -> float:
    requests = offline_workload(llm.tokenizer, num_requests=num_requests, output_len=output_len)
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in requests], params, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start)


def ttft_ms(llm: LLM, input_len: int) -> float:
    request = offline_workload(llm.tokenizer, num_requests=1, min_input_len=input_len, max_input_len=input_len)[0]
    start = time.perf_counter()
    llm.generate([{"prompt_token_ids": request.prompt_token_ids}], SamplingParams(max_tokens=1), use_tqdm=False)
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    small = args.small
    llm = LLM(dtype=args.dtype, quantization=args.quantization)
    llm.engine.warm_up()  # captures every decode shape (CUDA graphs on CUDA) before anything is timed
    device = llm.engine.runner.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    bandwidth = copy_gb_s(device)
    floor_ms = 1000 * weight_bytes(llm.engine.runner.model) / (bandwidth * 1e9)
    runs: dict[str, list[float]] = {"step": [], "tps64": [], "ttft": []}
    for _ in range(args.repeats):
        runs["step"].append(decode_step_ms(llm, 16 if small else 128))
        runs["tps64"].append(throughput(llm, 4 if small else 64, 8 if small else 128))
        runs["ttft"].append(ttft_ms(llm, 300))
    del llm
    big = LLM(dtype=args.dtype, quantization=args.quantization, max_num_seqs=256, max_num_batched_tokens=8192)
    big.engine.warm_up()
    runs["tps256"] = [throughput(big, 8 if small else 256, 8 if small else 128) for _ in range(args.repeats)]
    median = {key: statistics.median(values) for key, values in runs.items()}
    print(f"{datetime.date.today()}, {name} ({device.type}); dtype {args.dtype}, quantization {args.quantization}; "
          f"device copy bandwidth {bandwidth:.0f} GB/s; medians of {args.repeats}")
    rows = [
        ["single-stream decode step (ms)", f"{median['step']:.3f}", "at most 2"],
        ["its floor: the weights at the copy bandwidth (ms)", f"{floor_ms:.3f}", ""],
        ["step / floor", f"{median['step'] / floor_ms:.1f}x", ""],
        ["64 requests, default settings (output tok/s)", f"{median['tps64']:.0f}", "at least 8,000"],
        ["256 requests, max_num_seqs 256 (output tok/s)", f"{median['tps256']:.0f}", "at least 25,000"],
        ["time to first token, 300-token prompt alone (ms)", f"{median['ttft']:.1f}", "at most 10"],
    ]
    print_figures(["figure", "value", "issue 29's target"], rows, runs)


if __name__ == "__main__":
    main()
