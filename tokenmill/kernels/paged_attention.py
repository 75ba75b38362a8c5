"""Bindings of csrc/paged_attention.c, which reads every sequence's K and V from their
blocks in place, decode rows and prefill chunks alike, in one call per layer; float32 blocks, or
int8 ones dequantized inside the kernel. Its writes store each step's new K and V in their slots
(quantizing them for int8) in one call per layer."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from tokenmill.attention.base import KVCacheView
from tokenmill.kernels.cpu_build import load_library
from tokenmill.kernels.launch import Kernel

_i64, _ptr, _float, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int


@dataclass(frozen=True)
class PagedAttentionKernels:
    """The library's entry points: attention over a float32 pool or an int8 one, and the writes."""

    f32: Kernel
    int8: Kernel
    write_f32: Kernel
    write_int8: Kernel

    @classmethod
    def load(cls) -> PagedAttentionKernels | None:
        library = load_library("paged_attention")
        return None if library is None else cls.from_library(library)

    @classmethod
    def from_library(cls, library: ctypes.CDLL) -> PagedAttentionKernels:
        write = [_ptr, _ptr, _i64, _i64] + [_ptr] * 4
        return cls(
            Kernel(library.paged_attention_f32, [_ptr] * 7 + [_i64] * 7 + [_float, _int]),
            Kernel(library.paged_attention_int8, [_ptr] * 9 + [_i64] * 7 + [_float, _int]),  # + K and V scales
            Kernel(library.kv_write_f32, write + [_i64] * 4 + [_int]),
            Kernel(library.kv_write_int8, write + [_ptr] * 2 + [_i64] * 4 + [_int]),
        )


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


def write_kv(
    kernels: PagedAttentionKernels, kv: KVCacheView, k: torch.Tensor, v: torch.Tensor,
    blocks: torch.Tensor, offsets: torch.Tensor,
) -> None:
    """KVCacheView.write in one C call, bit for bit (k, v: [T, KVH, D] float32; int64 slots)."""
    k, v = _dense_heads(k), _dense_heads(v)
    _, num_kv_heads, head_dim, block_size = kv.keys.shape
    rows = [k.data_ptr(), v.data_ptr(), k.stride(0), v.stride(0), blocks.data_ptr(), offsets.data_ptr(),
            kv.keys.data_ptr(), kv.values.data_ptr()]
    sizes = [k.shape[0], num_kv_heads, head_dim, block_size, torch.get_num_threads()]
    if kv.key_scales is None or kv.value_scales is None:
        kernels.write_f32(*rows, *sizes)
    else:
        kernels.write_int8(*rows, kv.key_scales.data_ptr(), kv.value_scales.data_ptr(), *sizes)


def _dense_heads(x: torch.Tensor) -> torch.Tensor:
    """x ([T, heads, D]) with dense heads; its rows may stay strided (views into the fused q/k/v
    projection)."""
    return x if x.stride(2) == 1 and x.stride(1) == x.shape[2] else x.contiguous()
