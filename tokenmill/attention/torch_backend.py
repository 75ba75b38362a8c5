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

from tokenmill.attention.base import AttentionBatch, KVCacheView, Sinks


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
    windowed: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # masks made so far

    def mask_for(self, window: int | None, sinks: int = 0) -> torch.Tensor:
        """The causal mask, cut to the last `window` keys of each query for a sliding-window layer,
        and the first `sinks` keys."""
        if window is None:
            return self.mask
        if (window, sinks) not in self.windowed:  # once per step: every layer with this window shares it
            seen = self.key_pos[:, None, :] > self.query_pos[:, :, None] - window
            if sinks:
                seen |= self.key_pos[:, None, :] < sinks
            self.windowed[window, sinks] = self.mask & _per_head(seen, self.num_queries_per_kv)
        return self.windowed[window, sinks]


@dataclass(frozen=True)
class TorchAttentionPlan:
    batch: AttentionBatch
    groups: list[AttentionGroup]

    def write(self, kv: KVCacheView, k: torch.Tensor, v: torch.Tensor) -> None:
        kv.write(k, v, self.batch.slot_blocks, self.batch.slot_offsets)

    def attend(self, q: torch.Tensor, kv: KVCacheView, window: int | None = None,
               sinks: Sinks | None = None) -> torch.Tensor:  # fmt: skip
        if self.batch.window is not None and window != self.batch.window:
            raise ValueError(f"a layer with window {window} reads tables kept for window {self.batch.window}")
        out = torch.empty_like(q)
        count = 0 if sinks is None else sinks.count
        for group in self.groups:  # at most two: decode and prefill
            sink_queries = None if sinks is None else sinks.queries[group.rows]
            out[group.rows] = _attend(q[group.rows], kv, group, group.mask_for(window, count), sink_queries, count)
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
        # first query (after its sink blocks): gather the sinks' blocks and those from there, so
        # that each step reads the sinks and the window, not the whole context.
        sink_blocks = -(-batch.sinks // size)
        first = 0 * seq_lens
        if batch.window:
            first = ((seq_lens - q_lens - batch.window + 1).clamp(min=0) // size).clamp(min=sink_blocks)
        width = int(((seq_lens + size - 1) // size - first).max().clamp(min=0))
        index = first[:, None] + torch.arange(width, device=device)[None, :]
        key_pos = (first * size)[:, None] + torch.arange(width * size, device=device)[None, :]
        if sink_blocks:
            index = torch.cat([torch.arange(sink_blocks, device=device).expand(hi - lo, -1), index], dim=1)
            key_pos = torch.cat([torch.arange(sink_blocks * size, device=device).expand(hi - lo, -1), key_pos], dim=1)
        tables = batch.block_tables[lo:hi].long()
        # Query i of sequence b sits at position seq_len_b - q_len_b + i and sees keys 0..there.
        # Padding queries copy the sequence's last real query, so no row is fully masked.
        i = torch.minimum(torch.arange(max_q, device=device)[None, :], (q_lens - 1)[:, None])
        query_pos = (seq_lens - q_lens)[:, None] + i
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


def _attend(q: torch.Tensor, kv: KVCacheView, group: AttentionGroup, mask: torch.Tensor,
            sink_queries: torch.Tensor | None = None, sinks: int = 0) -> torch.Tensor:  # fmt: skip
    """The queries of one group ([rows, H, D]) against their sequences' gathered K and V; the
    first `sinks` keys against sink_queries instead, where given."""
    num_seqs = group.block_tables.shape[0]
    num_heads, head_dim = q.shape[1], q.shape[2]
    kvh = kv.keys.shape[1]
    lq, g = group.max_query_len, num_heads // kvh

    def fold(queries: torch.Tensor) -> torch.Tensor:
        """The query heads that share a KV head folded into the query axis: GQA without repeating K and V."""
        if group.query_index is not None:
            queries = queries.index_select(0, group.query_index)
        return queries.view(num_seqs, lq, kvh, g, head_dim).permute(0, 2, 1, 3, 4).reshape(num_seqs, kvh, lq * g,
                                                                                           head_dim)  # fmt: skip

    q = fold(q)
    keys = _gather(kv.keys.transpose(2, 3), kv.key_scales, group.block_tables, q.dtype)
    values = _gather(kv.values, kv.value_scales, group.block_tables, q.dtype)
    if sink_queries is not None:
        # Two queries in one product: [sink query | query] . [key if a sink else 0 | 0 if a sink else key].
        is_sink = (group.key_pos < sinks)[:, None, :, None]
        q = torch.cat([fold(sink_queries), q], dim=-1)
        keys = torch.cat([keys * is_sink, keys * ~is_sink], dim=-1)
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
