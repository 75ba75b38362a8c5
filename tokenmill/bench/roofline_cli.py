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
    roofline.add_argument("--long-context", type=int, default=4096,
                          help="decode attention's read rate is measured after a prompt this long")
    roofline.add_argument("--batch", type=int, default=64, help="the batched decode step's sequences")
    roofline.add_argument("--batch-context", type=int, default=128, help="their prompts' tokens")
    add_engine_args(roofline)
    roofline.set_defaults(run=cmd_bench_roofline)


def cmd_bench_roofline(args: argparse.Namespace) -> int:
    from tokenmill.bench.roofline import decode_step, measure_limits, prefill_step, profile_decode

    llm = build_llm(args)
    model_config = llm.engine.runner.model_config
    precision = str(model_config.dtype).removeprefix("torch.")  # the products' of many rows
    _run_warm_up(llm)
    limits = measure_limits(args.read_bytes, ("float32", "bfloat16", "int8", precision))
    steps = [decode_step(llm, limits, args.context, args.decode_tokens),
             prefill_step(llm, limits, args.prefill_tokens, precision)]
    profiles = [profile_decode(llm, 1, args.context, args.decode_tokens),
                profile_decode(llm, args.batch, args.batch_context, 16),
                profile_decode(llm, 1, args.long_context, 16)]
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
    console.print(_profile_table(profiles, limits.read_gb_s))
    return 0


def _profile_table(profiles: list, read_gb_s: float) -> Table:  # profiles: list[DecodeProfile]
    table = Table(title="decode steps: where the time goes (medians)", title_justify="left")
    columns = ("batch x context", "step (ms)", "in C kernels", "fixed cost", "forward", "sampler", "host work",
               "attention: KV read", "of bandwidth")
    for column in columns:
        table.add_column(column, justify="right")
    for p in profiles:
        rate = p.kv_bytes / p.attention_seconds / 1e9 if p.attention_seconds else 0.0
        table.add_row(f"{p.batch} x {p.context}", f"{1000 * p.seconds:.2f}", f"{1000 * p.kernel_seconds:.2f} ms",
                      f"{100 * p.fixed_share:.0f}%", f"{1000 * p.forward_seconds:.2f} ms",
                      f"{1000 * p.sampler_seconds:.2f} ms", f"{100 * p.host_share:.0f}%",
                      f"{p.kv_bytes / 1e6:.0f} MB in {1000 * p.attention_seconds:.2f} ms",
                      f"{100 * rate / read_gb_s:.0f}%")
    return table


def _run_warm_up(llm) -> None:  # llm: tokenmill.LLM (imported late: loading the engine is slow)
    """Kernels compiled and the allocator warm before anything is timed."""
    llm.generate({"prompt_token_ids": list(range(100, 164))}, SamplingParams(max_tokens=4), use_tqdm=False)
