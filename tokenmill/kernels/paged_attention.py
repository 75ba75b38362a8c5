"""The `cpu` attention backend: csrc/paged_attention.c reads every sequence's K and V from their
blocks in place, decode rows and prefill chunks alike, in one call per layer."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from tokenmill.kernels.cpu_build import load_library
from tokenmill.model.attention import AttentionBatch

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


def run_kernel(
    kernel: ctypes._CFuncPtr, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    block_tables: torch.Tensor, query_start: torch.Tensor, seq_lens: torch.Tensor,
) -> torch.Tensor:
    """Every query row of the given sequences; int32 metadata, q: [T, H, D] -> [T, H, D].

    q's rows may be strided (a view into the fused q/k/v projection); its heads must be dense."""
    if q.stride(2) != 1 or q.stride(1) != q.shape[2]:
        q = q.contiguous()
    out = q.new_empty(q.shape)
    _, num_kv_heads, head_dim, block_size = k_cache.shape
    kernel(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(), query_start.data_ptr(),
        seq_lens.data_ptr(), out.data_ptr(), q.stride(0), seq_lens.shape[0], block_tables.shape[1], q.shape[1],
        num_kv_heads, head_dim, block_size, head_dim**-0.5, torch.get_num_threads(),
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class CpuAttentionPlan:
    batch: AttentionBatch
    kernel: ctypes._CFuncPtr

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        b = self.batch
        return run_kernel(self.kernel, q, k_cache, v_cache, b.block_tables, b.query_start, b.seq_lens)


class CpuAttentionBackend:
    name = "cpu"

    def __init__(self, kernel: ctypes._CFuncPtr) -> None:
        self.kernel = kernel

    @staticmethod
    def load_kernel() -> ctypes._CFuncPtr | None:
        library = load_library("paged_attention")
        if library is None:
            return None
        kernel = library.paged_attention_f32
        kernel.restype = None
        kernel.argtypes = [_ptr] * 7 + [_i64] * 7 + [ctypes.c_float, ctypes.c_int]
        return kernel

    def plan(self, batch: AttentionBatch) -> CpuAttentionPlan:
        return CpuAttentionPlan(batch, self.kernel)
