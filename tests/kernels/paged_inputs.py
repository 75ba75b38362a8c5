"""Random paged-attention inputs for the kernel tests: pools, scattered block tables, queries."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenmill.kernels.paged_attention import PagedAttentionKernels
from tokenmill.attention.base import AttentionBatch, KVCacheView, kv_block_views

NATIVE = PagedAttentionKernels.load()  # None without a C compiler
HAS_AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"


def random_batch(
    q_lens: list[int], seq_lens: list[int], num_blocks: int, block_size: int, gen: torch.Generator
) -> AttentionBatch:
    """Sequences whose blocks are scattered at random over the pool; decode rows first."""
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    width = max(blocks_per_seq)
    ids = torch.randperm(num_blocks, generator=gen)[: sum(blocks_per_seq)].split(blocks_per_seq)
    tables = torch.stack([F.pad(t, (0, width - len(t))) for t in ids]).int()
    q = torch.tensor(q_lens, dtype=torch.int32)
    num_tokens = sum(q_lens)
    return AttentionBatch(
        slot_blocks=torch.zeros(num_tokens, dtype=torch.long),
        slot_offsets=torch.zeros(num_tokens, dtype=torch.long),
        query_start=F.pad(torch.cumsum(q, 0, dtype=torch.int32), (1, 0)),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=tables,
        num_decode=sum(1 for n in q_lens if n == 1),
        block_size=block_size,
    )


def random_kv(num_blocks: int, kv_heads: int, head_dim: int, block_size: int, gen: torch.Generator) -> KVCacheView:
    keys = torch.randn(num_blocks, kv_heads, head_dim, block_size, generator=gen)
    values = torch.randn(num_blocks, kv_heads, block_size, head_dim, generator=gen)
    return KVCacheView(keys, values)


def quantized(kv: KVCacheView) -> KVCacheView:
    """A float32 cache written token by token into an int8 pool laid out as the runner's."""
    num_blocks, kv_heads, head_dim, block_size = kv.keys.shape
    pool = torch.zeros(2, num_blocks, kv_heads * head_dim * block_size, dtype=torch.int8)
    scales = torch.zeros(2, num_blocks, kv_heads * block_size)
    int8 = kv_block_views(pool, scales, block_size, kv_heads, head_dim)
    blocks = torch.arange(num_blocks).repeat_interleave(block_size)
    offsets = torch.arange(block_size).repeat(num_blocks)
    int8.write(kv.keys.permute(0, 3, 1, 2).flatten(0, 1), kv.values.transpose(1, 2).flatten(0, 1), blocks, offsets)
    return int8


def dequantized(kv: KVCacheView) -> KVCacheView:
    """An int8 cache's values in float64."""
    assert kv.key_scales is not None and kv.value_scales is not None
    keys = kv.keys.double() * kv.key_scales.double().unsqueeze(2)
    return KVCacheView(keys, kv.values.double() * kv.value_scales.double().unsqueeze(3))


def strided_q(num_tokens: int, heads: int, kv_heads: int, head_dim: int, gen: torch.Generator) -> torch.Tensor:
    """q as the model passes it: a view into the fused q/k/v projection, rows strided."""
    qkv = torch.randn(num_tokens, (heads + 2 * kv_heads) * head_dim, generator=gen)
    return qkv[:, : heads * head_dim].view(-1, heads, head_dim)
