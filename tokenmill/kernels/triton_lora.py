"""Multi-LoRA's delta on GPUs in Triton, for a whole mixed batch in two launches per layer, as
Punica's BGMV (and vLLM's LoRA kernels for decode) do: shrink, u[t] = x[t] @ A[s]^T, then expand,
y[t] += u[t] @ B^T[s], where s is row t's adapter slot (rows of slot -1 are left alone). One
program per row and block of outputs; a slot's matrices come from L2 for all its rows. The
expansion runs over every rank row of a fused layer (the rows another shard owns hold zeros in
these columns), which keeps it one dense loop. Tested on the CPU under Triton's interpreter; the
layer's PyTorch path (tokenmill/lora/layers.py) is the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R, BLOCK_K, BLOCK_N = 16, 64, 64


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, slots_ptr, u_ptr, K, R, x_row_stride,
                   BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    t = tl.program_id(0)
    slot = tl.load(slots_ptr + t)
    k_end = tl.where(slot >= 0, K, 0)  # a row without an adapter reads nothing
    rs = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = rs < R
    a_rows = a_ptr + tl.maximum(slot, 0).to(tl.int64) * R * K + rs[:, None] * K
    acc = tl.zeros([BLOCK_R], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_end
        x = tl.load(x_ptr + t.to(tl.int64) * x_row_stride + ks, mask=k_ok, other=0.0).to(tl.float32)
        a = tl.load(a_rows + ks[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(a * x[None, :], axis=1)
    tl.store(u_ptr + t * R + rs, acc, mask=r_ok)


@triton.jit
def _expand_kernel(u_ptr, bt_ptr, slots_ptr, y_ptr, N, R, y_row_stride,
                   BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    t = tl.program_id(0)
    slot = tl.load(slots_ptr + t)
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < tl.where(slot >= 0, N, 0)  # a row without an adapter is left alone
    bt = bt_ptr + tl.maximum(slot, 0).to(tl.int64) * R * N
    acc = tl.zeros([BLOCK_N], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rs = r0 + tl.arange(0, BLOCK_R)
        r_ok = rs < R
        u = tl.load(u_ptr + t * R + rs, mask=r_ok, other=0.0)
        b = tl.load(bt + rs[:, None] * N + ns[None, :], mask=r_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(u[:, None] * b, axis=0)
    y_row = y_ptr + t.to(tl.int64) * y_row_stride + ns
    y = tl.load(y_row, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_row, (y + acc).to(y_ptr.dtype.element_ty), mask=n_ok)


class TritonLoRAKernel:
    """The same call as kernels/lora.py's LoRAKernel, for tensors on a GPU (or any device under
    the interpreter)."""

    def add_delta(self, x: torch.Tensor, y: torch.Tensor, token_slots: torch.Tensor, lora_a: torch.Tensor,
                  lora_bt: torch.Tensor, shard_bounds: torch.Tensor, max_rank: int) -> bool:  # fmt: skip
        """y[t] += (x[t] @ lora_a[s].T) @ lora_bt[s] for each row t whose slot s is not -1, in place.
        shard_bounds and max_rank are unused: the expansion is dense (see above)."""
        if x.stride(1) != 1 or y.stride(1) != 1 or not lora_a.is_contiguous() or not lora_bt.is_contiguous():
            return False
        rows, k = x.shape
        rank_total, n = lora_bt.shape[1], lora_bt.shape[2]
        u = torch.empty(rows, rank_total, dtype=torch.float32, device=x.device)
        _shrink_kernel[(rows, triton.cdiv(rank_total, BLOCK_R))](
            x, lora_a, token_slots, u, k, rank_total, x.stride(0), BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K)
        _expand_kernel[(rows, triton.cdiv(n, BLOCK_N))](
            u, lora_bt, token_slots, y, n, rank_total, y.stride(0), BLOCK_R=BLOCK_R, BLOCK_N=BLOCK_N)
        return True
