"""Bindings of csrc/paged_attention.c, which reads every sequence's K and V from their
blocks in place, decode rows and prefill chunks alike, in one call per layer; float32 blocks, or
int8 ones dequantized inside the kernel, which also quantizes each step's new K and V into them."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from tokenmill.attention.base import KVCacheView
from tokenmill.kernels.cpu_build import load_library

_i64, _ptr, _float, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int


@dataclass(frozen=True)
class PagedAttentionKernels:
    """The library's entry points: attention over a float32 pool or an int8 one, and the int8 write."""

    f32: ctypes._CFuncPtr
    int8: ctypes._CFuncPtr
    write_int8: ctypes._CFuncPtr

    @classmethod
    def load(cls) -> PagedAttentionKernels | None:
        library = load_library("paged_attention")
        return None if library is None else cls.from_library(library)

    @classmethod
    def from_library(cls, library: ctypes.CDLL) -> PagedAttentionKernels:
        kernels = cls(library.paged_attention_f32, library.paged_attention_int8, library.kv_write_int8)
        kernels.f32.argtypes = [_ptr] * 7 + [_i64] * 7 + [_float, _int]
        kernels.int8.argtypes = [_ptr] * 9 + [_i64] * 7 + [_float, _int]  # the f32 ones and the K and V scales
        kernels.write_int8.argtypes = [_ptr, _ptr, _i64, _i64] + [_ptr] * 6 + [_i64] * 4
        for kernel in (kernels.f32, kernels.int8, kernels.write_int8):
            kernel.restype = None
        return kernels


def run_kernel(
    kernels: PagedAttentionKernels, q: torch.Tensor, kv: KVCacheView,
    block_tables: torch.Tensor, query_start: torch.Tensor, seq_lens: torch.Tensor,
) -> torch.Tensor:
    """Every query row of the given sequences; int32 metadata, q: [T, H, D] -> [T, H, D]."""
    q = _dense_heads(q)
    out = q.new_empty(q.shape)
    _, num_kv_heads, head_dim, block_size = kv.keys.shape
    if kv.key_scales is None or kv.value_scales is None:
        kernel, pools = kernels.f32, [kv.keys.data_ptr(), kv.values.data_ptr()]
    else:
        kernel = kernels.int8
        pools = [kv.keys.data_ptr(), kv.values.data_ptr(), kv.key_scales.data_ptr(), kv.value_scales.data_ptr()]
    kernel(
        q.data_ptr(), *pools, block_tables.data_ptr(), query_start.data_ptr(), seq_lens.data_ptr(), out.data_ptr(),
        q.stride(0), seq_lens.shape[0], block_tables.shape[1], q.shape[1], num_kv_heads, head_dim, block_size,
        head_dim**-0.5, torch.get_num_threads(),
    )  # fmt: skip
    return out


def write_int8(
    kernels: PagedAttentionKernels, kv: KVCacheView, k: torch.Tensor, v: torch.Tensor,
    blocks: torch.Tensor, offsets: torch.Tensor,
) -> None:
    """KVCacheView.write for an int8 cache in one C call, bit for bit (k, v: [T, KVH, D] float32)."""
    assert kv.key_scales is not None and kv.value_scales is not None
    k, v = _dense_heads(k), _dense_heads(v)
    _, num_kv_heads, head_dim, block_size = kv.keys.shape
    kernels.write_int8(
        k.data_ptr(), v.data_ptr(), k.stride(0), v.stride(0), blocks.data_ptr(), offsets.data_ptr(),
        kv.keys.data_ptr(), kv.values.data_ptr(), kv.key_scales.data_ptr(), kv.value_scales.data_ptr(),
        k.shape[0], num_kv_heads, head_dim, block_size,
    )  # fmt: skip


def _dense_heads(x: torch.Tensor) -> torch.Tensor:
    """x ([T, heads, D]) with dense heads; its rows may stay strided (views into the fused q/k/v
    projection)."""
    return x if x.stride(2) == 1 and x.stride(1) == x.shape[2] else x.contiguous()
