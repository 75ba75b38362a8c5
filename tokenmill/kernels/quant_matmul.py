"""csrc/quant_matmul.c from Python: x @ W^T for W packed by tokenmill/quant/packing.py."""

from __future__ import annotations

import ctypes

import torch

from tokenmill.kernels.cpu_build import load_library
from tokenmill.kernels.launch import Kernel
from tokenmill.quant.packing import PackedWeight

_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


class QuantMatmul:
    def __init__(self, library: ctypes.CDLL) -> None:
        self._kernel = Kernel(library.quant_matmul_f32, [_ptr, _i64] + [_ptr] * 5 + [_i64] * 4 + [_int, _int, _int])
        # Where the CPU has integer dot products (AVX-512 VNNI), 4-bit weights meet activations
        # rounded to int16 per group; tests turn it off to check the float path too.
        self.integer_path_for_int4 = bool(library.quant_matmul_has_integer_path())

    @classmethod
    def load(cls) -> QuantMatmul | None:
        library = load_library("quant_matmul")
        return None if library is None else cls(library)

    def __call__(self, x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: [..., K] float32 on the CPU (2-D rows may be strided); bias padded to w.padded_out_features."""
        if x.dim() != 2:
            return self(x.reshape(-1, x.shape[-1]), w, bias).view(*x.shape[:-1], w.out_features)
        if x.stride(-1) != 1:
            x = x.contiguous()
        y = x.new_empty(x.shape[0], w.padded_out_features)
        data, scale, offset, k, n_pad, group, bits = w.kernel_args
        self._kernel(x.data_ptr(), x.stride(0), data, scale, offset, bias.data_ptr() if bias is not None else 0,
                     y.data_ptr(), x.shape[0], k, n_pad, group, bits, self.integer_path_for_int4,
                     torch.get_num_threads())
        return y if w.padded_out_features == w.out_features else y[:, : w.out_features]
