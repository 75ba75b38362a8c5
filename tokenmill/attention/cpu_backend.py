"""The `cpu` attention backend: the C kernel (tokenmill/kernels/paged_attention.py) reads every
sequence's K and V from their blocks in place, decode rows and prefill chunks alike, in one call
per layer; float32 blocks, or int8 ones dequantized inside the kernel, which also quantizes each
step's new K and V into them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenmill.attention.base import AttentionBatch, KVCacheView
from tokenmill.kernels.paged_attention import PagedAttentionKernels, run_kernel, write_int8


@dataclass(frozen=True)
class CpuAttentionPlan:
    batch: AttentionBatch
    kernels: PagedAttentionKernels

    def write(self, kv: KVCacheView, k: torch.Tensor, v: torch.Tensor) -> None:
        b = self.batch
        if kv.key_scales is None:
            kv.write(k, v, b.slot_blocks, b.slot_offsets)
        else:
            write_int8(self.kernels, kv, k, v, b.slot_blocks, b.slot_offsets)

    def attend(self, q: torch.Tensor, kv: KVCacheView) -> torch.Tensor:
        b = self.batch
        return run_kernel(self.kernels, q, kv, b.block_tables, b.query_start, b.seq_lens)


class CpuAttentionBackend:
    name = "cpu"

    def __init__(self, kernels: PagedAttentionKernels) -> None:
        self.kernels = kernels

    def plan(self, batch: AttentionBatch) -> CpuAttentionPlan:
        return CpuAttentionPlan(batch, self.kernels)
