"""The `cpu` attention backend: the C kernels (tokenmill/kernels/paged_attention.py) write each
step's new K and V into their slots and read every sequence's K and V from their blocks in place,
decode rows and prefill chunks alike, one call per layer for each; float32 blocks, or int8 ones
quantized as they are written and dequantized as they are read."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenmill.attention.base import AttentionBatch, KVCacheView, Sinks, check_no_window
from tokenmill.kernels.paged_attention import PagedAttentionKernels, run_kernel, write_kv


@dataclass(frozen=True)
class CpuAttentionPlan:
    batch: AttentionBatch
    kernels: PagedAttentionKernels

    def write(self, kv: KVCacheView, k: torch.Tensor, v: torch.Tensor) -> None:
        write_kv(self.kernels, kv, k, v, self.batch.slot_blocks, self.batch.slot_offsets)

    def attend(self, q: torch.Tensor, kv: KVCacheView, window: int | None = None,
               sinks: Sinks | None = None) -> torch.Tensor:  # fmt: skip
        check_no_window(window, "cpu")
        b = self.batch
        return run_kernel(self.kernels, q, kv, b.block_tables, b.query_start, b.seq_lens)


class CpuAttentionBackend:
    name = "cpu"

    def __init__(self, kernels: PagedAttentionKernels) -> None:
        self.kernels = kernels

    def plan(self, batch: AttentionBatch) -> CpuAttentionPlan:
        return CpuAttentionPlan(batch, self.kernels)
