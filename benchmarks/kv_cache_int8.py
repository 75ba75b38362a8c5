"""Decode attention over a float32 KV cache and an int8 one, side by side, with the C kernel.

A decode step of --batch sequences holding 400-700 cached tokens each, at the default model's
attention shape (9 query heads, 3 KV heads, head_dim 64, block size 16), blocks scattered over
the pool. Each timing pass attends every one of --layers layer pools in turn, as a model step
does, so a layer's KV comes from memory rather than from the cache the previous call warmed.
The two caches alternate, pass after pass; medians are quoted, per layer. Also timed: writing
the step's new K and V (quantizing them, for int8), and the capacity of one memory budget.

    python benchmarks/kv_cache_int8.py [--batch 64] [--layers 30] [--passes 20] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tokenmill.attention.cpu_backend import CpuAttentionBackend
from tokenmill.kernels.paged_attention import PagedAttentionKernels
from tokenmill.model.arch_config import ArchConfig
from tokenmill.attention.base import AttentionBatch, KVCacheView, kv_block_views
from tokenmill.runner.kv_cache import allocate_kv_cache, block_bytes

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 9, 3, 64, 16


def decode_batch(batch_size: int, num_blocks: int, gen: torch.Generator) -> AttentionBatch:
    seq_lens = torch.randint(400, 701, (batch_size,), generator=gen)
    blocks_per_seq = [-(-int(n) // BLOCK_SIZE) for n in seq_lens]
    ids = torch.randperm(num_blocks, generator=gen)[: sum(blocks_per_seq)].split(blocks_per_seq)
    width = max(blocks_per_seq)
    tables = torch.stack([torch.nn.functional.pad(t, (0, width - len(t))) for t in ids]).int()
    last = seq_lens - 1  # each sequence's new token
    return AttentionBatch(
        slot_blocks=tables[torch.arange(batch_size), last // BLOCK_SIZE].long(),
        slot_offsets=last % BLOCK_SIZE,
        query_start=torch.arange(batch_size + 1, dtype=torch.int32),
        seq_lens=seq_lens.int(),
        block_tables=tables,
        num_decode=batch_size,
        block_size=BLOCK_SIZE,
    )


def layer_views(kv_dtype: torch.dtype, num_layers: int, num_blocks: int) -> list[KVCacheView]:
    """Layer pools filled with random K and V (quantized, for int8)."""
    arch = _arch(num_layers)
    pool, scales = allocate_kv_cache(arch, num_blocks, BLOCK_SIZE, kv_dtype, torch.device("cpu"))
    views = [kv_block_views(pool[i], None if scales is None else scales[i], BLOCK_SIZE, KV_HEADS, HEAD_DIM)
             for i in range(num_layers)]
    every_slot = torch.arange(num_blocks).repeat_interleave(BLOCK_SIZE), torch.arange(BLOCK_SIZE).repeat(num_blocks)
    for view in views:
        kv = torch.randn(2, num_blocks * BLOCK_SIZE, KV_HEADS, HEAD_DIM)
        view.write(kv[0], kv[1], *every_slot)
    return views


def time_pass(fn, views: list[KVCacheView]) -> float:
    """Seconds per layer for one pass over the layers."""
    start = time.perf_counter()
    for view in views:
        fn(view)
    return (time.perf_counter() - start) / len(views)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    num_blocks = args.batch * 700 // BLOCK_SIZE + 64
    batch = decode_batch(args.batch, num_blocks, gen)
    plan = CpuAttentionBackend(PagedAttentionKernels.load()).plan(batch)
    q = torch.randn(args.batch, HEADS, HEAD_DIM, generator=gen)
    k_new, v_new = torch.randn(2, args.batch, KV_HEADS, HEAD_DIM, generator=gen)
    caches = {"float32": layer_views(torch.float32, args.layers, num_blocks),
              "int8": layer_views(torch.int8, args.layers, num_blocks)}
    times: dict[str, dict[str, list[float]]] = {name: {"attend": [], "write": []} for name in caches}
    for _ in range(args.passes):
        for name, views in caches.items():
            times[name]["attend"].append(time_pass(lambda kv: plan.attend(q, kv), views))
            times[name]["write"].append(time_pass(lambda kv: plan.write(kv, k_new, v_new), views))

    tokens = batch.seq_lens.sum().item()
    print(f"decode batch {args.batch}, {tokens} cached tokens, {args.layers} layer pools, "
          f"{torch.get_num_threads()} threads, medians of {args.passes} passes, ms per layer")
    for name, t in times.items():
        print(f"  {name:8} attend {statistics.median(t['attend']) * 1e3:7.3f}   "
              f"write {statistics.median(t['write']) * 1e3:6.3f}")
    speedup = statistics.median(times["float32"]["attend"]) / statistics.median(times["int8"]["attend"])
    arch = _arch(30)
    ratio = block_bytes(arch, BLOCK_SIZE, torch.float32) / block_bytes(arch, BLOCK_SIZE, torch.int8)
    print(f"int8 attention speed-up {speedup:.2f}x; tokens per byte of KV budget: {ratio:.2f}x float32's")


def _arch(num_layers: int) -> ArchConfig:
    """The default model's attention shape (SmolLM2-135M)."""
    return ArchConfig("llama", 49152, 576, 1536, num_layers, HEADS, KV_HEADS, HEAD_DIM, 1e-5, 1e5, 8192, True)


if __name__ == "__main__":
    main()
