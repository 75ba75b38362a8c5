"""Paged attention for GPUs in Triton: every query row attends straight from the block pool,
through its sequence's block table, with no gather of K and V.

One program per (query row, KV head): it loads the G query heads that share the KV head ([G, D],
padded to a dot's 16 rows), walks the sequence's blocks up to the row's own position with an
online softmax (causal within a prefill chunk, the cached prefix included), and reads int8
blocks with their per-token scales. Decode rows and prefill chunks are the same loop, so one
launch serves a mixed step. The pool layout is the backends' (attention/base.py): keys
[num_blocks, KVH, D, block_size], values [num_blocks, KVH, block_size, D].

Tested on the CPU under Triton's interpreter (TRITON_INTERPRET=1) against the torch backend. The
interpreter's dot is wrong on bfloat16 operands, so there the operands are cast to float32
(`dot_dtype`); on a GPU they stay in the activations' dtype, for the tensor cores.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from tokenmill.attention.base import KVCacheView

MIN_DOT_ROWS = 16  # tl.dot's smallest tile side


@triton.jit
def _paged_attention_kernel(
    q_ptr, out_ptr, k_ptr, v_ptr, k_scale_ptr, v_scale_ptr, block_tables_ptr, row_seq_ptr, row_pos_ptr,
    scale, q_row_stride, q_head_stride, block_table_stride,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, INT8: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(row_seq_ptr + row)
    pos = tl.load(row_pos_ptr + row)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    j = tl.arange(0, BLOCK_SIZE)
    heads = kv_head * GROUP + g
    real = g < GROUP
    q_offsets = row * q_row_stride + heads[:, None] * q_head_stride + d[None, :]  # q may be a view of fused qkv
    q = tl.load(q_ptr + q_offsets, mask=real[:, None], other=0.0).to(DOT_DTYPE)

    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for b in range(0, pos // BLOCK_SIZE + 1):
        block = tl.load(block_tables_ptr + seq * block_table_stride + b).to(tl.int64)
        base = block * NUM_KV_HEADS + kv_head
        k = tl.load(k_ptr + (base * HEAD_DIM + d[:, None]) * BLOCK_SIZE + j[None, :])  # [D, BS]
        v = tl.load(v_ptr + (base * BLOCK_SIZE + j[:, None]) * HEAD_DIM + d[None, :])  # [BS, D]
        if INT8:
            k = k.to(tl.float32) * tl.load(k_scale_ptr + base * BLOCK_SIZE + j)[None, :]
            v = v.to(tl.float32) * tl.load(v_scale_ptr + base * BLOCK_SIZE + j)[:, None]
        s = tl.dot(q, k.to(DOT_DTYPE), input_precision="ieee") * scale  # [G, BS]
        s = tl.where((b * BLOCK_SIZE + j)[None, :] <= pos, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision="ieee")
        m = m_new
    out = acc / l[:, None]
    out_offsets = (row * NUM_HEADS + heads[:, None]) * HEAD_DIM + d[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=real[:, None])


def check_shape(head_dim: int, block_size: int) -> None:
    """The tiles are a head_dim by block_size product: both powers of two, at least 16."""
    for name, value in (("head_dim", head_dim), ("block_size", block_size)):
        if value < MIN_DOT_ROWS or value & (value - 1):
            raise ValueError(f"the triton attention backend needs {name} a power of two >= {MIN_DOT_ROWS}, got {value}")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def dot_operand_dtype(dtype: torch.dtype) -> tl.dtype:
    """tl.dot's operand dtype for activations of `dtype`: theirs on a GPU (bfloat16/float16 run on
    the tensor cores), float32 under the interpreter (its bfloat16 dot is wrong)."""
    return tl.float32 if interpreting() or dtype == torch.float32 else _TL_DTYPES[dtype]


def paged_attention(q: torch.Tensor, kv: KVCacheView, block_tables: torch.Tensor, row_seq: torch.Tensor,
                    row_pos: torch.Tensor, scale: float) -> torch.Tensor:  # fmt: skip
    """q: [T, H, D]; row_seq, row_pos: [T] int32, each row's sequence (its block-table row) and
    position (it sees keys 0..position); returns [T, H, D]."""
    num_rows, num_heads, head_dim = q.shape
    num_kv_heads, block_size = kv.keys.shape[1], kv.keys.shape[3]
    group = num_heads // num_kv_heads
    assert q.stride(2) == 1, "each head's query must be contiguous"
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    int8 = kv.key_scales is not None
    dot_dtype = dot_operand_dtype(q.dtype)
    _paged_attention_kernel[(num_rows, num_kv_heads)](
        q, out, kv.keys, kv.values, kv.key_scales if int8 else q, kv.value_scales if int8 else q, block_tables,
        row_seq, row_pos, scale, q.stride(0), q.stride(1), block_tables.stride(0),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, GROUP=group,
        GROUP_PAD=max(MIN_DOT_ROWS, triton.next_power_of_2(group)), INT8=int8, DOT_DTYPE=dot_dtype,
    )  # fmt: skip
    return out


_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
