"""The `cpu` attention backend: csrc/paged_attention.c reads decode rows' K and V from their
blocks in place; prefill chunks, where compute rather than memory bounds the work, go to
PyTorch's flash attention over gathered blocks (faster there than the kernel's loops)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from tokenmill.kernels.cpu_build import load_library
from tokenmill.model.attention import AttentionBatch
from tokenmill.model.torch_attention import TorchAttentionBackend, AttentionGroup, attend_group

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


def run_kernel(
    kernel: ctypes._CFuncPtr, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    block_tables: torch.Tensor, query_start: torch.Tensor, seq_lens: torch.Tensor,
) -> torch.Tensor:
    """Every query row of the given sequences; int32 metadata, q: [T, H, D] -> [T, H, D]."""
    q = q.contiguous()
    out = torch.empty_like(q)
    num_blocks, num_kv_heads, head_dim, block_size = k_cache.shape
    kernel(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(), query_start.data_ptr(),
        seq_lens.data_ptr(), out.data_ptr(), seq_lens.shape[0], block_tables.shape[1], q.shape[1], num_kv_heads,
        head_dim, block_size, head_dim**-0.5, torch.get_num_threads(),
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class CpuAttentionPlan:
    batch: AttentionBatch
    kernel: ctypes._CFuncPtr
    prefill: AttentionGroup | None

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        if self.prefill is None:
            return self._decode(q, k_cache, v_cache)
        out, num_decode = torch.empty_like(q), self.batch.num_decode
        if num_decode:
            out[:num_decode] = self._decode(q[:num_decode], k_cache, v_cache)
        out[self.prefill.rows] = attend_group(q[self.prefill.rows], k_cache, v_cache, self.prefill)
        return out

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        b, n = self.batch, self.batch.num_decode
        return run_kernel(self.kernel, q, k_cache, v_cache, b.block_tables[:n], b.query_start[: n + 1], b.seq_lens[:n])


class CpuAttentionBackend:
    name = "cpu"

    def __init__(self, kernel: ctypes._CFuncPtr, num_queries_per_kv: int) -> None:
        self.kernel = kernel
        self.prefill = TorchAttentionBackend(num_queries_per_kv)

    @staticmethod
    def load_kernel() -> ctypes._CFuncPtr | None:
        library = load_library("paged_attention")
        if library is None:
            return None
        kernel = library.paged_attention_f32
        kernel.restype = None
        kernel.argtypes = [_ptr] * 7 + [_i64] * 6 + [ctypes.c_float, ctypes.c_int]
        return kernel

    def plan(self, batch: AttentionBatch) -> CpuAttentionPlan:
        num_seqs = batch.seq_lens.shape[0]
        prefill = self.prefill.group(batch, batch.num_decode, num_seqs) if num_seqs > batch.num_decode else None
        return CpuAttentionPlan(batch, self.kernel, prefill)
