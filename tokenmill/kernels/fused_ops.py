"""csrc/fused_ops.c from Python: RMSNorm with its residual add, RoPE and SwiGLU's activation,
each one C call, and the matrix product for a few rows (float32 or bfloat16 weights). The layers
use these on float32 CPU tensors once `FusedOps.load()` succeeds; tokenmill/model/layers.py holds
the PyTorch versions, which the tests compare against."""

from __future__ import annotations

import ctypes

import torch

from tokenmill.kernels.cpu_build import load_library
from tokenmill.kernels.launch import Kernel

_i64, _ptr, _int, _float = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float


class FusedOps:
    def __init__(self, library: ctypes.CDLL) -> None:
        self._rms_norm = Kernel(library.rms_norm_f32, [_ptr] * 4 + [_i64, _i64, _float, _int, _int])
        self._rotary = Kernel(library.rotary_f32, [_ptr, _ptr, _i64, _i64, _ptr, _ptr, _ptr] + [_i64] * 4 + [_int])
        self._silu_and_mul = Kernel(library.silu_and_mul_f32, [_ptr, _ptr, _i64, _i64, _int])
        few_rows = [_ptr, _i64, _ptr, _ptr, _ptr] + [_i64] * 3 + [_int]
        self._linear_few_rows = {torch.float32: Kernel(library.linear_few_rows_f32, few_rows),
                                 torch.bfloat16: Kernel(library.linear_few_rows_bf16, few_rows)}

    @classmethod
    def load(cls) -> FusedOps | None:
        library = load_library("fused_ops")
        return None if library is None else cls(library)

    def rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like RMSNorm.forward: (normalized, new residual). Adds x into residual in place."""
        x = x.contiguous()
        add = residual is not None
        residual = residual if add else x
        out = torch.empty_like(x)
        self._rms_norm(x.data_ptr(), residual.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0],
                       x.shape[1], eps, int(add), torch.get_num_threads())
        return out, residual

    def rotary(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotates q [T, H, D] and k [T, KVH, D] in place (rows may be strided views of one tensor)."""
        assert q.stride(1) == k.stride(1) == q.shape[2] and q.stride(2) == k.stride(2) == 1
        self._rotary(q.data_ptr(), k.data_ptr(), q.stride(0), k.stride(0), positions.data_ptr(), cos.data_ptr(),
                     sin.data_ptr(), q.shape[0], q.shape[1], k.shape[1], q.shape[2], torch.get_num_threads())
        return q, k

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate_up = gate_up.contiguous()
        rows, size = gate_up.shape[0], gate_up.shape[1] // 2
        out = gate_up.new_empty(rows, size)
        self._silu_and_mul(gate_up.data_ptr(), out.data_ptr(), rows, size, torch.get_num_threads())
        return out

    def linear_few_rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """x @ weight.T (+ bias) for float32 x [M, K] of a few rows, weight nn.Linear's [N, K] in float32
        or bfloat16; None where the kernel does not take the shapes (K a multiple of 16, N of 4, rows
        contiguous)."""
        rows, k = x.shape
        n = weight.shape[0]
        kernel = self._linear_few_rows.get(weight.dtype)
        if kernel is None or k % 16 or n % 4 or x.stride(1) != 1 or not weight.is_contiguous():
            return None
        y = x.new_empty(rows, n)
        kernel(x.data_ptr(), x.stride(0), weight.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),
               rows, k, n, torch.get_num_threads())
        return y

