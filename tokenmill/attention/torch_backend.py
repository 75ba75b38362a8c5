"""The plain PyTorch attention backend: gather each sequence's blocks (dequantized where the
cache is int8), then one SDPA call.

Sequences split into at most two groups, each attended in one batched call per layer: decode
rows (one query per sequence) and prefill rows (a chunk of queries per sequence, padded to the
longest chunk). Keeping them apart stops one long prefill chunk from padding every decode row.
Runs on any device; it is also the reference the kernels are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tokenmill.attention.base import AttentionBatch, KVCacheView


@dataclass(frozen=True)
class AttentionGroup:
    rows: slice  # this group's rows in the flat batch
    block_tables: torch.Tensor  # [B, max_blocks] int64: the blocks gathered, from each sequence's first in reach
    key_pos: torch.Tensor  # [B, max_blocks * block_size]: the position of each gathered key
    mask: torch.Tensor  # [B, 1, Lq * G, max_blocks * block_size] bool: key j visible to query row
    query_index: torch.Tensor | None  # [B * Lq] rows of the group for each padded query; None: no padding
    query_valid: torch.Tensor | None  # [B * Lq] bool, real (not padding) queries
    max_query_len: int
    query_pos: torch.Tensor  # [B, Lq]: each (padded) query's position
    num_queries_per_kv: int
    windowed: dict[int, torch.Tensor] = field(default_factory=dict)  # the masks made so far, by window

    def mask_for(self, window: int | None) -> torch.Tensor:
        """The causal mask, cut to the last `window` keys of each query for a sliding-window layer."""
        if window is None:
            return self.mask
        if window not in self.windowed:  # once per step: every layer with this window shares it
            recent = self.key_pos[:, None, :] > self.query_pos[:, :, None] - window
            self.windowed[window] = self.mask & _per_head(recent, self.num_queries_per_kv)
        return self.windowed[window]


@dataclass(frozen=True)
class TorchAttentionPlan:
    batch: AttentionBatch
    groups: list[AttentionGroup]

    def write(self, kv: KVCacheView, k: torch.Tensor, v: torch.Tensor) -> None:
        kv.write(k, v, self.batch.slot_blocks, self.batch.slot_offsets)

    def attend(self, q: torch.Tensor, kv: KVCacheView, window: int | None = None) -> torch.Tensor:
        out = torch.empty_like(q)
        for group in self.groups:  # at most two: decode and prefill
            out[group.rows] = _attend(q[group.rows], kv, group, group.mask_for(window))
        return out


class TorchAttentionBackend:
    name = "torch"

    def __init__(self, num_queries_per_kv: int) -> None:
        self.num_queries_per_kv = num_queries_per_kv

    def plan(self, batch: AttentionBatch) -> TorchAttentionPlan:
        bounds = [(0, batch.num_decode), (batch.num_decode, batch.seq_lens.shape[0])]
        groups = [self._group(batch, lo, hi) for lo, hi in bounds if hi > lo]
        return TorchAttentionPlan(batch, groups)

    def _group(self, batch: AttentionBatch, lo: int, hi: int) -> AttentionGroup:
        device = batch.block_tables.device
        q_starts = batch.query_start[lo : hi + 1].long()
        q_lens = q_starts[1:] - q_starts[:-1]
        seq_lens = batch.seq_lens[lo:hi].long()
        max_q = int(q_lens.max())
        size = batch.block_size
        # A windowed group's tables hold holes before each sequence's first block in reach of its
        # first query: gather from there, so that each step reads the window, not the whole context.
        first = (seq_lens - q_lens - batch.window + 1).clamp(min=0) // size if batch.window else 0 * seq_lens
        width = int(((seq_lens + size - 1) // size - first).max())
        index = first[:, None] + torch.arange(width, device=device)[None, :]
        tables = batch.block_tables[lo:hi].long()
        # Query i of sequence b sits at position seq_len_b - q_len_b + i and sees keys 0..there.
        # Padding queries copy the sequence's last real query, so no row is fully masked.
        i = torch.minimum(torch.arange(max_q, device=device)[None, :], (q_lens - 1)[:, None])
        query_pos = (seq_lens - q_lens)[:, None] + i
        key_pos = (first * size)[:, None] + torch.arange(width * size, device=device)[None, :]
        mask = key_pos[:, None, :] <= query_pos[:, :, None]  # keys past a table's end are past its queries
        padded = bool((q_lens != max_q).any())
        return AttentionGroup(
            rows=slice(int(q_starts[0]), int(q_starts[-1])),
            block_tables=tables.gather(1, index.clamp(max=tables.shape[1] - 1)),
            key_pos=key_pos,
            mask=_per_head(mask, self.num_queries_per_kv),
            query_index=((q_starts[:-1] - q_starts[0])[:, None] + i).flatten() if padded else None,
            query_valid=(torch.arange(max_q, device=device)[None, :] < q_lens[:, None]).flatten() if padded else None,
            max_query_len=max_q,
            query_pos=query_pos,
            num_queries_per_kv=self.num_queries_per_kv,
        )


def _per_head(mask: torch.Tensor, num_queries_per_kv: int) -> torch.Tensor:
    """[B, Lq, keys] -> [B, 1, Lq * G, keys]: the query heads sharing a KV head folded into the rows."""
    return mask.repeat_interleave(num_queries_per_kv, dim=1).unsqueeze(1)


def _attend(q: torch.Tensor, kv: KVCacheView, group: AttentionGroup, mask: torch.Tensor) -> torch.Tensor:
    """The queries of one group ([rows, H, D]) against their sequences' gathered K and V."""
    num_seqs = group.block_tables.shape[0]
    num_heads, head_dim = q.shape[1], q.shape[2]
    kvh = kv.keys.shape[1]
    if group.query_index is not None:
        q = q.index_select(0, group.query_index)
    lq, g = group.max_query_len, num_heads // kvh
    # Fold the query heads that share a KV head into the query axis: GQA without repeating K and V.
    q = q.view(num_seqs, lq, kvh, g, head_dim).permute(0, 2, 1, 3, 4).reshape(num_seqs, kvh, lq * g, head_dim)
    keys = _gather(kv.keys.transpose(2, 3), kv.key_scales, group.block_tables, q.dtype)
    values = _gather(kv.values, kv.value_scales, group.block_tables, q.dtype)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=head_dim**-0.5)
    out = out.view(num_seqs, kvh, lq, g, head_dim).permute(0, 2, 1, 3, 4).reshape(num_seqs * lq, num_heads, head_dim)
    return out if group.query_valid is None else out[group.query_valid]


def _gather(
    cache: torch.Tensor, scales: torch.Tensor | None, block_tables: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """cache: [num_blocks, KVH, block_size, D] (a view), with its [num_blocks, KVH, block_size]
    scales where int8; returns [B, KVH, max_blocks * block_size, D] in dtype."""
    num_seqs, max_blocks = block_tables.shape
    _, kvh, block_size, head_dim = cache.shape
    blocks = cache[block_tables.flatten()].view(num_seqs, max_blocks, kvh, block_size, head_dim)
    if scales is not None:
        blocks = (blocks * scales[block_tables.flatten()].view(num_seqs, max_blocks, kvh, block_size, 1)).to(dtype)
    return blocks.transpose(1, 2).reshape(num_seqs, kvh, max_blocks * block_size, head_dim)
