"""Paged attention: keys and values live in a block pool and are read through block tables.

A step's tokens arrive flat ([T, heads, head_dim]). They split into at most two groups, each
attended in one batched call per layer: decode rows (one query per sequence) and prefill rows
(a chunk of queries per sequence, padded to the longest chunk). Keeping the groups apart stops
one long prefill chunk from padding every decode row to its length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AttentionGroup:
    """Sequences whose queries share one padded layout, with their keys' block tables."""

    rows: slice  # this group's rows in the flat batch
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with block 0 (masked out)
    mask: torch.Tensor  # [B, 1, Lq * G, max_blocks * block_size] bool: key j visible to query row
    query_index: torch.Tensor | None  # [B * Lq] rows of the group for each padded query; None: no padding
    query_valid: torch.Tensor | None  # [B * Lq] bool, real (not padding) queries
    max_query_len: int


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] flat KV slot (block * block_size + offset) of each new token
    groups: list[AttentionGroup]


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5
        # Bound by the model runner once the pool is allocated: [num_blocks, block_size, KVH, D].
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q: [T, H, D], k and v: [T, KVH, D]; returns [T, H * D]."""
        self._write_cache(k, v, meta.slot_mapping)
        out = torch.empty_like(q)
        for group in meta.groups:  # at most two: decode and prefill
            out[group.rows] = self._attend(q[group.rows], group)
        return out.flatten(1)

    def _write_cache(self, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        self.k_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, slots, k)
        self.v_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, slots, v)

    def _attend(self, q: torch.Tensor, group: AttentionGroup) -> torch.Tensor:
        num_seqs = group.block_tables.shape[0]
        if group.query_index is not None:
            q = q.index_select(0, group.query_index)
        lq, kvh, g, d = group.max_query_len, self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim
        # Fold the query heads that share a KV head into the query axis: GQA without repeating K and V.
        q = q.view(num_seqs, lq, kvh, g, d).permute(0, 2, 1, 3, 4).reshape(num_seqs, kvh, lq * g, d)
        keys = self._gather(self.k_cache, group.block_tables)
        values = self._gather(self.v_cache, group.block_tables)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=group.mask, scale=self.scale)
        out = out.view(num_seqs, kvh, lq, g, d).permute(0, 2, 1, 3, 4).reshape(num_seqs * lq, self.num_heads, d)
        if group.query_valid is not None:
            out = out[group.query_valid]
        return out

    def _gather(self, cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
        """[B, KVH, max_blocks * block_size, D] view of each sequence's keys or values."""
        num_seqs, max_blocks = block_tables.shape
        blocks = cache.index_select(0, block_tables.flatten())
        return blocks.view(num_seqs, max_blocks * cache.shape[1], self.num_kv_heads, self.head_dim).transpose(1, 2)
