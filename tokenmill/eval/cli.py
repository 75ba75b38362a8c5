"""`tokenmill eval quality`: perplexity, KL and top-1 agreement against float32, per precision."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tokenmill.bench.workloads import CORPUS_PATH
from tokenmill.config import ATTENTION_BACKENDS, ModelConfig
from tokenmill.engine_args import model_name
from tokenmill.eval.precisions import PRECISIONS, REFERENCE, parse_precisions

if TYPE_CHECKING:
    from tokenmill.engine.engine import LLMEngine
    from tokenmill.eval.quality import QualityResult

console = Console()


def add_eval_commands(commands: argparse._SubParsersAction) -> None:
    evals = commands.add_parser("eval", help="measure the engine's quality").add_subparsers(
        dest="eval_command", required=True)
    quality = evals.add_parser("quality", help="what each precision costs in quality, against float32")
    quality.add_argument("--model", type=Path, default=None,
                         help="a GGUF file or a Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    quality.add_argument("--precisions", type=_precisions, default=list(PRECISIONS),
                         help=f"comma-separated, among {','.join(PRECISIONS)} (default: all)")
    quality.add_argument("--windows", type=int, default=8, help="windows of text, evenly spaced through it")
    quality.add_argument("--window-tokens", type=int, default=256, help="tokens per window")
    quality.add_argument("--text", type=Path, default=CORPUS_PATH,
                         help="held-out text, paragraphs separated by blank lines (default: the shipped prose)")
    quality.add_argument("--out", type=Path, default=None, help="keep the results as JSON")
    quality.add_argument("--quantization-group-size", type=int, default=ModelConfig.quantization_group_size,
                         help="int4: input channels per scale")
    quality.add_argument("--kv-cache-memory", type=int, default=64 << 20,
                         help="KV cache bytes per engine; it must hold one window")
    quality.add_argument("--device", default="auto")
    quality.add_argument("--attention-backend", default=ModelConfig.attention_backend, choices=ATTENTION_BACKENDS)
    quality.set_defaults(run=cmd_eval_quality)


def _precisions(text: str) -> list[str]:
    try:
        return parse_precisions(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_engine(args: argparse.Namespace, precision: str) -> LLMEngine:
    from tokenmill.llm import LLM  # here, not above: it loads torch and the engine

    return LLM(args.model, device=args.device, attention_backend=args.attention_backend,
               kv_cache_memory=args.kv_cache_memory, quantization_group_size=args.quantization_group_size,
               **PRECISIONS[precision]).engine


def cmd_eval_quality(args: argparse.Namespace) -> int:
    from tokenmill.eval.quality import evaluate, text_windows  # here, not above: it loads torch

    reference = build_engine(args, REFERENCE)
    engines = {name: reference if name == REFERENCE else build_engine(args, name) for name in args.precisions}
    windows = text_windows(reference.tokenizer, args.windows, args.window_tokens, args.text)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("scoring windows", total=len(windows))
        results = evaluate(reference, engines, windows, on_window=lambda: progress.advance(task))
    model = model_name(args)
    console.print(quality_table(f"{model} · {args.text.name} · {args.windows} x {args.window_tokens} tokens · "
                                f"vs {REFERENCE}", results))
    if args.out is not None:
        _save(args.out, model, args, results)
        console.print(f"results: {args.out}")
    return 0


def _save(path: Path, model: str, args: argparse.Namespace, results: list[QualityResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(
        model=model, text=str(args.text), windows=args.windows, window_tokens=args.window_tokens,
        reference=REFERENCE, command=shlex.join(["tokenmill", *sys.argv[1:]]),
        results=[asdict(r) for r in results],
    ), indent=2))


def quality_table(title: str, results: list[QualityResult]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("precision")
    for column in ("perplexity", "KL (nats)", "top-1 agree", "weights MiB", "KV KiB/tok"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r.precision, f"{r.perplexity:.3f}", f"{r.mean_kl:.2e}", f"{100 * r.top1_agreement:.2f}%",
                      f"{r.weight_bytes / 2**20:.1f}", f"{r.kv_bytes_per_token / 2**10:.2f}")
    return table
