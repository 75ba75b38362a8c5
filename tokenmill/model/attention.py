"""Paged attention: keys and values live in a block pool and are read through block tables.

The model sees one small interface. Each step, the runner describes its tokens in an
`AttentionBatch` (flat, for every sequence at once) and asks the chosen backend for an
`AttentionPlan`, which every layer then uses to attend its queries in one batched call.
Backends: `torch` (gather + scaled_dot_product_attention, any device; the reference) and
`cpu` (a C kernel that reads blocks in place; tokenmill/kernels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class AttentionBatch:
    """A step's tokens, flat: sequence s owns query rows query_start[s]:query_start[s + 1]."""

    slot_blocks: torch.Tensor  # [T] int64: the block each new token's K and V go to
    slot_offsets: torch.Tensor  # [T] int64: and the offset in that block
    query_start: torch.Tensor  # [S + 1] int32
    seq_lens: torch.Tensor  # [S] int32: keys each sequence has once this step's tokens are written
    block_tables: torch.Tensor  # [S, max_blocks] int32, padded with block 0
    num_decode: int  # the first num_decode sequences have exactly one query (decode rows)
    block_size: int


class AttentionPlan(Protocol):
    """What a backend precomputed for one step; shared by every layer."""

    batch: AttentionBatch

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """q: [T, H, D]; caches as `kv_block_views` lays them out; returns [T, H, D]."""
        ...


class AttentionBackend(Protocol):
    name: str

    def plan(self, batch: AttentionBatch) -> AttentionPlan: ...


def kv_block_views(
    layer_pool: torch.Tensor, block_size: int, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's K and V views of the pool ([2, num_blocks, block elements]).

    Keys are stored transposed, [num_blocks, KVH, D, block_size], so that a query's scores against
    a whole block are D vector multiply-adds; values are [num_blocks, KVH, block_size, D].
    """
    num_blocks = layer_pool.shape[1]
    keys = layer_pool[0].view(num_blocks, num_kv_heads, head_dim, block_size)
    values = layer_pool[1].view(num_blocks, num_kv_heads, block_size, head_dim)
    return keys, values


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        # Bound by the model runner once the pool is allocated (see kv_block_views).
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        """q: [T, H, D], k and v: [T, KVH, D]; returns [T, H * D]."""
        blocks, offsets = plan.batch.slot_blocks, plan.batch.slot_offsets
        self.k_cache[blocks, :, :, offsets] = k
        self.v_cache[blocks, :, offsets, :] = v
        return plan.attend(q, self.k_cache, self.v_cache).flatten(1)


def select_attention_backend(
    name: str, device: torch.device, dtype: torch.dtype, num_queries_per_kv: int
) -> AttentionBackend:
    """`auto` takes the C kernel for float32 on the CPU where it compiles, else the torch path."""
    from tokenmill.kernels.paged_attention import CpuAttentionBackend
    from tokenmill.model.torch_attention import TorchAttentionBackend

    if name == "torch":
        return TorchAttentionBackend(num_queries_per_kv)
    supported = device.type == "cpu" and dtype == torch.float32
    if name == "cpu" and not supported:
        raise ValueError(f"the cpu attention backend runs float32 on the CPU, not {dtype} on {device}")
    kernel = CpuAttentionBackend.load_kernel() if supported else None
    if kernel is not None:
        return CpuAttentionBackend(kernel)
    if name == "cpu":
        raise RuntimeError("the cpu attention kernel could not be compiled (is a C compiler installed?)")
    return TorchAttentionBackend(num_queries_per_kv)
