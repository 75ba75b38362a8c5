"""`tokenmill ...`: thin subcommands over the offline LLM."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tokenmill.bench.cli import add_bench_commands
from tokenmill.config import DraftTrainingConfig, EngineConfig, LoRATrainingConfig
from tokenmill.engine_args import (
    add_engine_args, add_sampling_args, build_llm, engine_options, model_name, sampling_params,
)  # fmt: skip
from tokenmill.eval.cli import add_eval_commands
from tokenmill.log import configure_logging
from tokenmill.server.config import API_KEY_ENV, ServerConfig


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


def cmd_serve(args: argparse.Namespace) -> int:
    from tokenmill.server.serve import serve  # here, not above: it loads torch and the engine

    if args.model_tag is not None:
        args.model = args.model_tag
    engine_config = EngineConfig.create(**engine_options(args))
    if engine_config.parallel.node_rank > 0:  # ranks only: node 0 serves the API
        from tokenmill.distributed.executor import run_node

        return run_node(engine_config)
    serve(engine_config, ServerConfig(
        served_model_name=args.served_model_name or model_name(args), host=args.host, port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV),
        max_queued_requests=args.max_queued_requests, max_queued_tokens=args.max_queued_tokens,
        request_timeout_s=args.request_timeout, max_request_bytes=args.max_request_bytes,
        max_n=args.max_n, drain_timeout_s=args.drain_timeout, lora_modules=_lora_modules(args),
        max_engine_restarts=args.max_engine_restarts, allowed_origins=tuple(args.allowed_origins),
        api_key_on_metrics=args.api_key_on_metrics,
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
    llm = LLM(model_path, dtype="float32", quantization="none", seed=args.seed, enable_prefix_caching=False)
    output = args.output or default_heads_path(model_path)
    accuracy = run(llm, config, output, model_name(args))
    print(f"heads saved to {output}; held-out top-1 accuracy per head: "
          + ", ".join(f"{a:.3f}" for a in accuracy))
    return 0


def cmd_train_lora(args: argparse.Namespace) -> int:
    from tokenmill.model.default import default_model_path
    from tokenmill.training.lora import train

    model_path = args.model or default_model_path()
    if model_path.suffix != ".gguf":
        raise SystemExit("train-lora reads the base model from a GGUF file")
    config = LoRATrainingConfig(rank=args.rank, alpha=args.alpha, targets=tuple(args.targets.split(",")),
                                steps=args.steps, learning_rate=args.learning_rate, seed=args.seed)
    losses = train(model_path, args.data, args.output, config)
    print(f"adapter saved to {args.output}; training text's loss per token {losses['loss_before']:.3f} -> "
          f"{losses['loss_after']:.3f}")
    return 0


def cmd_disagg_proxy(args: argparse.Namespace) -> int:
    from tokenmill.kv_transfer.proxy import ProxyConfig, serve_proxy

    serve_proxy(ProxyConfig(args.prefill.rstrip("/"), args.decode.rstrip("/")), args.host, args.port)
    return 0


def cmd_router(args: argparse.Namespace) -> int:
    from tokenmill.router.app import serve_router
    from tokenmill.router.cache.config import ResponseCacheConfig
    from tokenmill.router.cascade import CascadeConfig
    from tokenmill.router.config import RouterConfig

    cache = ResponseCacheConfig(
        modes=tuple(m.strip() for m in (args.response_cache or "").split(",") if m.strip()), opt_in=args.response_cache_opt_in,
        ttl_s=args.response_cache_ttl, max_entries=args.response_cache_max_entries, file=args.response_cache_file,
        redis_url=args.response_cache_redis, semantic_threshold=args.semantic_threshold,
    )
    cascade = None
    if args.cascade:
        cascade = CascadeConfig.parse(args.cascade, name=args.cascade_name, min_mean_logprob=args.cascade_threshold)
    config = RouterConfig(
        backends=tuple(args.backend), backends_file=args.backends_file, policy=args.policy,
        api_key=args.api_key or os.environ.get(API_KEY_ENV), health_interval_s=args.health_interval,
        request_timeout_s=args.request_timeout, balance_abs_threshold=args.balance_abs_threshold,
        balance_rel_threshold=args.balance_rel_threshold, cache_threshold=args.cache_threshold,
        session_header=args.session_header, cache=cache, cascade=cascade,
    )
    serve_router(config, args.host, args.port)
    return 0


def add_router_args(parser: argparse.ArgumentParser) -> None:
    from tokenmill.router.cache.config import CACHE_MODES, ResponseCacheConfig
    from tokenmill.router.cache.response_cache import CACHE_HEADER
    from tokenmill.router.cascade import CascadeConfig as K
    from tokenmill.router.config import POLICIES, RouterConfig as R

    parser.add_argument("--backend", action="append", default=[], help="a backend's URL (repeat for each)")
    parser.add_argument("--backends-file", type=Path, default=None,
                        help="more backends, one URL a line, re-read at every health check")
    parser.add_argument("--policy", choices=POLICIES, default=R.policy)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help=f"require this key on /v1 routes (or set {API_KEY_ENV}); "
                        "it is passed on to the backends")
    parser.add_argument("--health-interval", type=float, default=R.health_interval_s, help="seconds between checks")
    parser.add_argument("--request-timeout", type=float, default=R.request_timeout_s)
    parser.add_argument("--balance-abs-threshold", type=int, default=R.balance_abs_threshold,
                        help="prefix_aware: in-flight difference past which the least loaded backend wins")
    parser.add_argument("--balance-rel-threshold", type=float, default=R.balance_rel_threshold,
                        help="prefix_aware: and the ratio past which it does")
    parser.add_argument("--cache-threshold", type=float, default=R.cache_threshold,
                        help="prefix_aware: the share of the prompt a match must cover to count")
    parser.add_argument("--session-header", default=R.session_header, help="session: the header naming a session")
    C = ResponseCacheConfig
    parser.add_argument("--response-cache", default=None, metavar="MODES",
                        help=f"cache deterministic answers (temperature 0 or a seed): {' or '.join(CACHE_MODES)}, "
                        "or both, comma-separated (default: no cache)")
    parser.add_argument("--response-cache-opt-in", action="store_true",
                        help=f"cache only requests that ask, with the {CACHE_HEADER} header (on, exact, semantic)")
    parser.add_argument("--response-cache-ttl", type=float, default=C.ttl_s, help="seconds an answer is kept")
    parser.add_argument("--response-cache-max-entries", type=int, default=C.max_entries)
    parser.add_argument("--response-cache-file", type=Path, default=None,
                        help="keep the in-memory cache across restarts in this file")
    parser.add_argument("--response-cache-redis", default=None, metavar="URL",
                        help="keep answers in Redis, shared by every router that names it (redis://host:6379/0)")
    parser.add_argument("--semantic-threshold", type=float, default=C.semantic_threshold,
                        help="semantic: the cosine similarity at which two questions count as one")
    parser.add_argument("--cascade", default=None, metavar="SMALL,LARGE",
                        help="a model cascade: requests for --cascade-name go to SMALL, and to LARGE when "
                        "SMALL's answer is not confident enough")
    parser.add_argument("--cascade-name", default=K.name, help="the model name that asks for the cascade")
    parser.add_argument("--cascade-threshold", type=float, default=K.min_mean_logprob,
                        help="the mean token log-probability at which the small model's answer stands")


def add_server_args(parser: argparse.ArgumentParser) -> None:
    S = ServerConfig  # its defaults are the flags' defaults
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
    parser.add_argument("--max-n", type=int, default=S.max_n, help="samples one request may ask for (n, best_of)")
    parser.add_argument("--drain-timeout", type=float, default=S.drain_timeout_s,
                        help="on SIGTERM, seconds that in-flight requests get to finish")
    parser.add_argument("--max-engine-restarts", type=int, default=S.max_engine_restarts,
                        help="how many times an engine core that exits is replaced; then the server exits (code 1)")
    parser.add_argument("--allowed-origins", nargs="*", default=[], metavar="ORIGIN",
                        help="browser origins (https://host:port) that CORS lets call the API; none by default")
    parser.add_argument("--api-key-on-metrics", action="store_true", help="require the API key on /metrics too")
    parser.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=PATH",
                        help="LoRA adapters (PEFT folders) to serve, each under its name (needs --enable-lora)")


def _lora_modules(args: argparse.Namespace) -> dict[str, str]:
    modules = {}
    for item in args.lora_modules:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--lora-modules takes NAME=PATH, got {item!r}")
        modules[name] = path
    if modules and not args.enable_lora:
        raise SystemExit("--lora-modules needs --enable-lora")
    return modules


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
    serve.set_defaults(run=cmd_serve, verbose=True)  # a server says what it chose and when it is ready

    proxy = commands.add_parser("disagg-proxy", help="one API over a prefill and a decode instance "
                                "(`tokenmill serve --kv-role prefill|decode`)")
    proxy.add_argument("--prefill", required=True, help="the prefill instance's URL, e.g. http://127.0.0.1:8100")
    proxy.add_argument("--decode", required=True, help="the decode instance's URL")
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=8000)
    proxy.set_defaults(run=cmd_disagg_proxy, verbose=True)

    router = commands.add_parser("router", help="one OpenAI-compatible API over many backends")
    add_router_args(router)
    router.set_defaults(run=cmd_router, verbose=True)

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

    lora = commands.add_parser("train-lora", help="fine-tune a LoRA adapter with peft on the CPU (PEFT format)")
    lora.add_argument("data", nargs="+", type=Path, help="chat pairs (.jsonl of prompt/response) or plain text files")
    lora.add_argument("--output", type=Path, required=True, help="the adapter's folder")
    lora.add_argument("--model", type=Path, default=None, help="the base model's GGUF file (default model)")
    L = LoRATrainingConfig
    lora.add_argument("--rank", type=int, default=L.rank)
    lora.add_argument("--alpha", type=float, default=L.alpha)
    lora.add_argument("--targets", default=",".join(L.targets), help="comma-separated modules among "
                      "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    lora.add_argument("--steps", type=int, default=L.steps)
    lora.add_argument("--learning-rate", type=float, default=L.learning_rate)
    lora.add_argument("--seed", type=int, default=L.seed)
    lora.set_defaults(run=cmd_train_lora)

    add_bench_commands(commands)
    add_eval_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.INFO if args.verbose else logging.WARNING)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
