"""Weight-only quantized matrix products for GPUs in Triton: y = x @ W^T + bias, with W read as
int8 or packed int4 (two a byte) and dequantized tile by tile in registers, never whole.

The layout (quant/gpu_packing.py) is the plain one: q [N, K] int8, or [N, K / 2] bytes whose low
nibble is channel 2i and high nibble channel 2i + 1; scale and offset [N, K / group]. A tile
spans 32 input channels, or 16 where groups are (GGUF's Q6_K), always inside one group. Activations
stay in their dtype (bfloat16 on CUDA) and accumulate in float32. Tested on the CPU under
Triton's interpreter, where dot operands are float32 (kernels/triton_attention.py says why).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tokenmill.kernels.triton_attention import MIN_DOT_ROWS, dot_operand_dtype
from tokenmill.quant.gpu_packing import GpuPackedWeight

@triton.jit
def _quant_matmul_kernel(
    x_ptr, q_ptr, scale_ptr, offset_ptr, bias_ptr, y_ptr, M, N, K, x_row_stride, groups_per_row,
    GROUP: tl.constexpr, BITS: tl.constexpr, HAS_OFFSET: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < M, cols < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rows[:, None] * x_row_stride + ks[None, :], mask=row_ok[:, None], other=0.0)
        if BITS == 8:
            w = tl.load(q_ptr + cols[:, None] * K + ks[None, :], mask=col_ok[:, None], other=0).to(tl.float32)
        else:
            pairs = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            packed = tl.load(q_ptr + cols[:, None] * (K // 2) + pairs[None, :], mask=col_ok[:, None], other=0)
            packed = packed.to(tl.int32)
            w = tl.join(packed & 15, packed >> 4).reshape(BLOCK_N, BLOCK_K).to(tl.float32)
        group = k0 // GROUP
        w = w * tl.load(scale_ptr + cols * groups_per_row + group, mask=col_ok, other=0.0)[:, None]
        if HAS_OFFSET:
            w = w + tl.load(offset_ptr + cols * groups_per_row + group, mask=col_ok, other=0.0)[:, None]
        acc += tl.dot(x.to(DOT_DTYPE), tl.trans(w).to(DOT_DTYPE), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0)[None, :]
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def quant_matmul(x: torch.Tensor, weight: GpuPackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """x: [..., K] (rows contiguous in K); returns [..., N] in x's dtype."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k, n = x.shape[0], weight.in_features, weight.out_features
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m = MIN_DOT_ROWS if m <= MIN_DOT_ROWS else 64
    block_n = 64
    dot_dtype = dot_operand_dtype(x.dtype)
    block_k = 32 if weight.group % 32 == 0 else 16
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _quant_matmul_kernel[grid](
        x, weight.q, weight.scale, weight.offset if weight.offset is not None else weight.scale,
        bias if bias is not None else weight.scale, y, m, n, k, x.stride(0), weight.scale.shape[1],
        GROUP=weight.group, BITS=weight.bits, HAS_OFFSET=weight.offset is not None, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_DTYPE=dot_dtype,
    )  # fmt: skip
    return y.view(*shape[:-1], n)
