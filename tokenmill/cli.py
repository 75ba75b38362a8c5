"""`tokenmill ...`: thin subcommands over the offline LLM."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenmill.bench.cli import add_bench_commands
from tokenmill.config import (
    ATTENTION_BACKENDS, DTYPE_CHOICES, KV_CACHE_DTYPE_CHOICES, QUANTIZATION_CHOICES, CacheConfig,
    DraftTrainingConfig, ModelConfig, SchedulerConfig,
)
from tokenmill.eval.cli import add_eval_commands
from tokenmill.model.default import DEFAULT_MODEL_NAME
from tokenmill.sampling_params import SamplingParams
from tokenmill.server.config import API_KEY_ENV



def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The engine's options, with vLLM's flag names."""
    parser.add_argument("--model", type=Path, default=None,
                        help="a GGUF file or a Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=ModelConfig.seed)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=SchedulerConfig.max_num_seqs)
    parser.add_argument("--max-num-batched-tokens", type=int, default=SchedulerConfig.max_num_batched_tokens)
    parser.add_argument("--block-size", type=int, default=CacheConfig.block_size)
    parser.add_argument("--kv-cache-memory", type=int, default=None, help="KV cache budget in bytes")
    parser.add_argument("--kv-cache-memory-fraction", type=float, default=CacheConfig.kv_cache_memory_fraction,
                        help="KV cache budget as a fraction of available memory, when --kv-cache-memory is unset")
    parser.add_argument("--attention-backend", default=ModelConfig.attention_backend, choices=ATTENTION_BACKENDS)
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                        default=CacheConfig.enable_prefix_caching, help="reuse the KV of shared prompt prefixes")
    parser.add_argument("--no-prefix-caching", dest="enable_prefix_caching", action="store_false",
                        help="the same as --no-enable-prefix-caching")
    parser.add_argument("-q", "--quantization", default="none", choices=QUANTIZATION_CHOICES,
                        help="weights: int8 (per channel) or int4 (per group), quantized at load; "
                             "gguf: a GGUF file's own quantized tensors")
    parser.add_argument("--quantization-group-size", type=int, default=ModelConfig.quantization_group_size,
                        help="int4: input channels per scale")
    parser.add_argument("--kv-cache-dtype", default=CacheConfig.kv_cache_dtype, choices=KV_CACHE_DTYPE_CHOICES,
                        help="int8: one byte per K/V element with a scale per token and head")
    parser.add_argument("--speculative-config", type=_json_object, default=None,
                        help='speculative decoding, as JSON: \'{"method": "ngram", "num_speculative_tokens": 3}\'; '
                             'methods: ngram, draft, heads, ngram_heads')
    parser.add_argument("--draft-layers", type=int, default=None,
                        help="speculate with a self-draft made of the model's first N layers (method draft)")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_sampling_args(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine flags as LLM's (and EngineConfig.create's) keyword arguments."""
    return dict(
        model=args.model, dtype=args.dtype, device=args.device, seed=args.seed, block_size=args.block_size,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len, kv_cache_memory=args.kv_cache_memory,
        kv_cache_memory_fraction=args.kv_cache_memory_fraction, attention_backend=args.attention_backend,
        enable_prefix_caching=args.enable_prefix_caching, quantization=args.quantization,
        quantization_group_size=args.quantization_group_size, kv_cache_dtype=args.kv_cache_dtype,
        speculative_config=_speculative_config(args),
    )  # fmt: skip


def _speculative_config(args: argparse.Namespace) -> dict | None:
    """--speculative-config, with --draft-layers N as its draft_layers (and method draft if unset)."""
    if args.draft_layers is None:
        return args.speculative_config
    return {"method": "draft", **(args.speculative_config or {}), "draft_layers": args.draft_layers}


def build_llm(args: argparse.Namespace):  # -> tokenmill.LLM (imported late: loading the engine is slow)
    from tokenmill.llm import LLM

    return LLM(**engine_options(args))


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed)


def cmd_generate(args: argparse.Namespace) -> int:
    prompts = list(args.prompts)
    if args.file is not None:
        prompts += [line.rstrip("\n") for line in args.file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit("tokenmill generate: give prompts as arguments or with --file")
    llm = build_llm(args)
    outputs = llm.generate(prompts, sampling_params(args), use_tqdm=len(prompts) > 1)
    for out in outputs:
        if len(outputs) > 1:
            print(f"--- {out.prompt!r}")
        print(out.prompt + out.outputs[0].text if args.echo else out.outputs[0].text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    llm = build_llm(args)
    params = sampling_params(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("tokenmill chat: an empty line or Ctrl-D ends the chat.", file=sys.stderr)
    while True:
        try:
            user = input("> ").strip()
        except EOFError:
            break
        if not user:
            break
        messages.append({"role": "user", "content": user})
        prompt = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        reply = ""
        for out in llm.stream(prompt, params):
            text = out.outputs[0].text
            print(text[len(reply):], end="", flush=True)
            reply = text
        print()
        messages.append({"role": "assistant", "content": reply})
    return 0


def model_name(args: argparse.Namespace) -> str:
    """The name a model goes by in the API and in results: the file's or directory's stem."""
    return DEFAULT_MODEL_NAME if args.model is None else Path(args.model).stem


def cmd_serve(args: argparse.Namespace) -> int:
    from tokenmill.config import EngineConfig
    from tokenmill.server.config import ServerConfig
    from tokenmill.server.serve import serve

    if args.model_tag is not None:
        args.model = args.model_tag
    engine_config = EngineConfig.create(**engine_options(args))
    serve(engine_config, ServerConfig(
        served_model_name=args.served_model_name or model_name(args), host=args.host, port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV),
        max_queued_requests=args.max_queued_requests, max_queued_tokens=args.max_queued_tokens,
        request_timeout_s=args.request_timeout, max_request_bytes=args.max_request_bytes,
        drain_timeout_s=args.drain_timeout,
    ))  # fmt: skip
    return 0


def cmd_train_draft(args: argparse.Namespace) -> int:
    from tokenmill.llm import LLM
    from tokenmill.model.default import default_model_path
    from tokenmill.speculative.heads import default_heads_path
    from tokenmill.training.draft_heads import run

    model_path = args.model or default_model_path()
    config = DraftTrainingConfig(num_heads=args.num_heads, num_prompts=args.num_prompts, epochs=args.epochs,
                                 seed=args.seed)
    llm = LLM(model_path, dtype="float32", seed=args.seed, enable_prefix_caching=False)
    output = args.output or default_heads_path(model_path)
    accuracy = run(llm, config, output, model_name(args))
    print(f"heads saved to {output}; held-out top-1 accuracy per head: "
          + ", ".join(f"{a:.3f}" for a in accuracy))
    return 0


def add_server_args(parser: argparse.ArgumentParser) -> None:
    from tokenmill.server.config import ServerConfig as S

    parser.add_argument("model_tag", nargs="?", type=Path, default=None, help="the model (same as --model)")
    parser.add_argument("--host", default=S.host)
    parser.add_argument("--port", type=int, default=S.port)
    parser.add_argument("--api-key", default=None, help=f"require this key on /v1 routes (or set {API_KEY_ENV})")
    parser.add_argument("--served-model-name", default=None, help="the model's name in the API")
    parser.add_argument("--max-queued-requests", type=int, default=S.max_queued_requests,
                        help="requests admitted but not yet producing tokens; past it, 429")
    parser.add_argument("--max-queued-tokens", type=int, default=S.max_queued_tokens,
                        help="prompt tokens of those requests; past it, 429")
    parser.add_argument("--request-timeout", type=float, default=S.request_timeout_s, help="seconds per request")
    parser.add_argument("--max-request-bytes", type=int, default=S.max_request_bytes)
    parser.add_argument("--drain-timeout", type=float, default=S.drain_timeout_s,
                        help="on SIGTERM, seconds that in-flight requests get to finish")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenmill", description="An LLM inference serving engine.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log start-up and sizing details")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate completions for prompts")
    generate.add_argument("prompts", nargs="*", help="prompts (each one argument)")
    generate.add_argument("--file", type=Path, default=None, help="more prompts, one per line")
    generate.add_argument("--echo", action="store_true", help="print each prompt before its completion")
    add_engine_args(generate)
    add_sampling_args(generate, max_tokens=64)
    generate.set_defaults(run=cmd_generate)

    chat = commands.add_parser("chat", help="an interactive chat in the terminal, streamed")
    chat.add_argument("--system", default=None, help="a system prompt")
    add_engine_args(chat)
    add_sampling_args(chat, max_tokens=512)
    chat.set_defaults(run=cmd_chat)

    serve = commands.add_parser("serve", help="the OpenAI-compatible HTTP server")
    add_server_args(serve)
    add_engine_args(serve)
    serve.set_defaults(run=cmd_serve)

    train = commands.add_parser("train-draft", help="train draft heads for speculative decoding (self-distillation)")
    train.add_argument("--model", type=Path, default=None, help="a GGUF file or model directory (default model)")
    train.add_argument("--output", type=Path, default=None, help="the heads file (default: shipped beside the code)")
    train.add_argument("--num-heads", type=int, default=DraftTrainingConfig.num_heads)
    train.add_argument("--num-prompts", type=int, default=DraftTrainingConfig.num_prompts,
                       help="prompts the model answers to make the training text")
    train.add_argument("--epochs", type=int, default=DraftTrainingConfig.epochs)
    train.add_argument("--seed", type=int, default=DraftTrainingConfig.seed,
                       help="draws the prompts (the benchmarks draw with 0)")
    train.set_defaults(run=cmd_train_draft)

    add_bench_commands(commands, add_engine_args)
    add_eval_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
