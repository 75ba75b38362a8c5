"""The GPU attention backend: the Triton kernel (kernels/triton_attention.py) over the block pool.

The plan gives each query row its sequence and position with device operations only (no copy
back to the host), so building it never waits for the GPU; every layer then attends in one launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenmill.attention.base import AttentionBatch, KVCacheView, Sinks, check_no_window
from tokenmill.kernels.triton_attention import paged_attention


@dataclass(frozen=True)
class TritonAttentionPlan:
    batch: AttentionBatch
    row_seq: torch.Tensor  # [T] int32: the sequence (block-table row) of each query row
    row_pos: torch.Tensor  # [T] int32: its position; it sees keys 0..position

    def write(self, kv: KVCacheView, k: torch.Tensor, v: torch.Tensor) -> None:
        kv.write(k, v, self.batch.slot_blocks, self.batch.slot_offsets)

    def attend(self, q: torch.Tensor, kv: KVCacheView, window: int | None = None,
               sinks: Sinks | None = None) -> torch.Tensor:  # fmt: skip
        check_no_window(window, "triton")  # sinks come with a window
        return paged_attention(q, kv, self.batch.block_tables, self.row_seq, self.row_pos, q.shape[-1] ** -0.5)


class TritonAttentionBackend:
    name = "triton"

    def plan(self, batch: AttentionBatch) -> TritonAttentionPlan:
        starts = batch.query_start
        q_lens = starts[1:] - starts[:-1]
        num_rows = batch.slot_blocks.shape[0]
        seqs = torch.arange(q_lens.shape[0], dtype=torch.int32, device=starts.device)
        row_seq = torch.repeat_interleave(seqs, q_lens, output_size=num_rows)
        rows = torch.arange(num_rows, dtype=torch.int32, device=starts.device)
        row_pos = (batch.seq_lens - q_lens)[row_seq] + rows - starts[row_seq]
        return TritonAttentionPlan(batch, row_seq.int(), row_pos.int())
