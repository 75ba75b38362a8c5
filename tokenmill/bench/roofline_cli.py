"""`tokenmill bench roofline`: this machine's limits, then the engine's steps as fractions of them."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.engine_args import add_engine_args, build_llm, model_name
from tokenmill.sampling_params import SamplingParams

console = Console()


def add_roofline_command(kinds: argparse._SubParsersAction) -> None:
    roofline = kinds.add_parser("roofline", help="bandwidth and matrix rates, and each step's fraction of its floor")
    roofline.add_argument("--context", type=int, default=512, help="prompt tokens before the decode steps")
    roofline.add_argument("--decode-tokens", type=int, default=64)
    roofline.add_argument("--prefill-tokens", type=int, default=512, help="one chunk: at most max_num_batched_tokens")
    roofline.add_argument("--read-bytes", type=int, default=2 << 30,
                          help="the bandwidth probe's buffer: several times the last-level cache")
    add_engine_args(roofline)
    roofline.set_defaults(run=cmd_bench_roofline)


def cmd_bench_roofline(args: argparse.Namespace) -> int:
    from tokenmill.bench.roofline import decode_step, decode_step_cost, measure_limits, prefill_step

    llm = build_llm(args)
    model_config = llm.engine.runner.model_config
    precision = str(model_config.dtype).removeprefix("torch.")  # the products' of many rows
    _run_warm_up(llm)
    limits = measure_limits(args.read_bytes, ("float32", "bfloat16", "int8", precision))
    steps = [decode_step(llm, limits, args.context, args.decode_tokens),
             prefill_step(llm, limits, args.prefill_tokens, precision)]
    cost = decode_step_cost(llm, args.context, args.decode_tokens)
    console.print(f"{cpu_model()} ({', '.join(cpu_features()) or 'no AVX2'}), {model_name(args)}, "
                  f"products of many rows in {precision}, quantization {args.quantization}, "
                  f"{'eager' if llm.engine.runner.decode_graphs is None else 'decode steps replayed'}")
    machine = Table(title="this machine, measured now", title_justify="left")
    for column in ("read GB/s", *(f"{p} GFLOP/s" for p in limits.gflop_s)):
        machine.add_column(column, justify="right")
    machine.add_row(f"{limits.read_gb_s:.1f}", *(f"{rate:.0f}" for rate in limits.gflop_s.values()))
    console.print(machine)
    table = Table(title="steps against their floors", title_justify="left")
    for column in ("step", "time (ms)", "work", "floor (ms)", "of the roofline"):
        table.add_column(column, justify="right")
    for step in steps:
        work = f"{step.work / 1e6:.1f} MB" if step.name.startswith("decode") else f"{step.work / 1e9:.1f} GFLOP"
        table.add_row(step.name, f"{1000 * step.seconds:.2f}", work, f"{1000 * step.floor_s:.2f}",
                      f"{100 * step.fraction:.0f}%")
    console.print(table)
    console.print(f"decode step, batch 1 (medians): {1000 * cost.seconds:.2f} ms, of which "
                  f"{1000 * cost.kernel_seconds:.2f} ms inside the C kernels; fixed cost around them "
                  f"{1000 * (cost.seconds - cost.kernel_seconds):.2f} ms, {100 * cost.fixed_share:.0f}% of the step")
    return 0


def _run_warm_up(llm) -> None:  # llm: tokenmill.LLM (imported late: loading the engine is slow)
    """Kernels compiled and the allocator warm before anything is timed."""
    llm.generate({"prompt_token_ids": list(range(100, 164))}, SamplingParams(max_tokens=4), use_tqdm=False)
