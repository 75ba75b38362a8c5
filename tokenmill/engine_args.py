"""The engine's and sampling's command-line options, shared by every subcommand that runs the engine.

A leaf: it imports neither the engine nor torch, so parsers build (and `--help` answers) at once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenmill.config import (
    ATTENTION_BACKENDS, DTYPE_CHOICES, KV_CACHE_DTYPE_CHOICES, KV_ROLES, QUANTIZATION_CHOICES, CacheConfig,
    KVTransferConfig, LoRAConfig, ModelConfig, ParallelConfig, SchedulerConfig,
)  # fmt: skip
from tokenmill.model.default import DEFAULT_MODEL_NAME
from tokenmill.sampling_params import SamplingParams

if TYPE_CHECKING:
    from tokenmill.llm import LLM


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The engine's options, with vLLM's flag names."""
    parser.add_argument("--model", type=Path, default=None,
                        help="a GGUF file or a Hugging Face model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="auto: bfloat16 where the CPU has bfloat16 dot products or on CUDA, else float32")
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
    # vLLM's flag, so its command lines run: tokenmill names blocks by SHA-256 always (kv/block_hash.py),
    # collision-resistant, so no tenant can craft a prompt whose blocks pass for another's.
    parser.add_argument("--prefix-caching-hash-algo", default="sha256", choices=["sha256"],
                        help="how prefix-cache blocks are named: SHA-256, the only choice (safe for many "
                             "tenants; keep tenants apart with each request's cache_salt)")
    parser.add_argument("-q", "--quantization", default="auto", choices=QUANTIZATION_CHOICES,
                        help="weights: int8 (per channel) or int4 (per group), quantized at load; "
                             "gguf: a GGUF file's own quantized tensors; none: in --dtype; "
                             "auto: gguf for a GGUF file on the CPU, else none")
    parser.add_argument("--quantization-group-size", type=int, default=ModelConfig.quantization_group_size,
                        help="int4: input channels per scale")
    parser.add_argument("--kv-cache-dtype", default=CacheConfig.kv_cache_dtype, choices=KV_CACHE_DTYPE_CHOICES,
                        help="int8: one byte per K/V element with a scale per token and head")
    parser.add_argument("--disable-hybrid-kv-cache-manager", action="store_true",
                        help="sliding-window models: one block table for all layers, windows masked and nothing "
                             "freed (by default the windowed layers free the KV behind their window)")
    parser.add_argument("--sliding-window", type=int, default=None,
                        help="streaming: every layer attends to the last N tokens only (and to the sinks); the KV "
                             "behind is freed and generation may go past the model's context length")
    parser.add_argument("--attention-sinks", type=int, default=0,
                        help="with --sliding-window: the first N tokens stay visible to every later one "
                             "(StreamingLLM's attention sinks; 4 is its choice)")
    parser.add_argument("--speculative-config", type=_json_object, default=None,
                        help='speculative decoding, as JSON: \'{"method": "ngram", "num_speculative_tokens": 3}\'; '
                             'methods: ngram, draft, heads, ngram_heads')
    parser.add_argument("--enforce-eager", action="store_true",
                        help="run every step eagerly: no captured and replayed decode steps (for debugging)")
    parser.add_argument("--enable-lora", action="store_true", help="serve LoRA adapters (tokenmill/lora)")
    parser.add_argument("--max-loras", type=int, default=LoRAConfig.max_loras, help="adapters resident at once")
    parser.add_argument("--max-lora-rank", type=int, default=LoRAConfig.max_lora_rank)
    parser.add_argument("--max-cpu-loras", type=int, default=None,
                        help="adapters kept in host memory, resident ones included (default: --max-loras)")
    parser.add_argument("-tp", "--tensor-parallel-size", type=int, default=ParallelConfig.tensor_parallel_size,
                        help="split the model over this many ranks (worker processes, torch.distributed)")
    parser.add_argument("-pp", "--pipeline-parallel-size", type=int, default=ParallelConfig.pipeline_parallel_size)
    parser.add_argument("--nnodes", type=int, default=ParallelConfig.nnodes,
                        help="hosts the ranks run on (each runs `tokenmill serve` with its --node-rank)")
    parser.add_argument("--node-rank", type=int, default=ParallelConfig.node_rank,
                        help="this host's place among --nnodes; 0 serves the API, the others run ranks only")
    parser.add_argument("--master-addr", default=ParallelConfig.master_addr, help="node 0's address: the rendezvous")
    parser.add_argument("--master-port", type=int, default=ParallelConfig.master_port,
                        help="the rendezvous port (0: a free one, single host only)")
    parser.add_argument("--kv-role", choices=KV_ROLES, default=None,
                        help="disaggregated serving: this instance prefills prompts for a decode instance, or "
                             "decodes them (with `tokenmill disagg-proxy` in front)")
    parser.add_argument("--kv-peer", default=KVTransferConfig.kv_peer,
                        help="host:port where the prefill instance meets the decode instance to move KV blocks")
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
        disable_hybrid_kv_cache_manager=args.disable_hybrid_kv_cache_manager,
        sliding_window=args.sliding_window, attention_sinks=args.attention_sinks,
        speculative_config=_speculative_config(args), enforce_eager=args.enforce_eager,
        enable_lora=args.enable_lora, max_loras=args.max_loras, max_lora_rank=args.max_lora_rank,
        max_cpu_loras=args.max_cpu_loras, tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size, master_addr=args.master_addr,
        master_port=args.master_port, nnodes=args.nnodes, node_rank=args.node_rank, kv_role=args.kv_role,
        kv_peer=args.kv_peer,
    )  # fmt: skip


def _speculative_config(args: argparse.Namespace) -> dict | None:
    """--speculative-config, with --draft-layers N as its draft_layers (and method draft if unset)."""
    if args.draft_layers is None:
        return args.speculative_config
    return {"method": "draft", **(args.speculative_config or {}), "draft_layers": args.draft_layers}


def build_llm(args: argparse.Namespace) -> LLM:
    from tokenmill.llm import LLM  # here, not above: it loads torch and the engine

    return LLM(**engine_options(args))


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed)


def model_name(args: argparse.Namespace) -> str:
    """The name a model goes by in the API and in results: the file's or directory's stem."""
    return DEFAULT_MODEL_NAME if args.model is None else Path(args.model).stem
