"""csrc/quant_matmul.c from Python: x @ W^T for W packed by tokenmill/quant/packing.py."""

from __future__ import annotations

import ctypes

import torch

from tokenmill.kernels.cpu_build import load_library
from tokenmill.quant.packing import PackedWeight

_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


class QuantMatmul:
    def __init__(self, library: ctypes.CDLL) -> None:
        self._kernel = library.quant_matmul_f32
        self._kernel.restype = None
        self._kernel.argtypes = [_ptr, _i64] + [_ptr] * 5 + [_i64] * 4 + [_int, _int]

    @classmethod
    def load(cls) -> QuantMatmul | None:
        library = load_library("quant_matmul")
        return None if library is None else cls(library)

    def __call__(self, x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: [..., K] float32 on the CPU (2-D rows may be strided); bias padded like the scales."""
        if x.dim() != 2:
            return self(x.reshape(-1, x.shape[-1]), w, bias).view(*x.shape[:-1], w.out_features)
        if x.stride(-1) != 1:
            x = x.contiguous()
        y = x.new_empty(x.shape[0], w.padded_out_features)
        self._kernel(
            x.data_ptr(), x.stride(0), w.data.data_ptr(), w.scale.data_ptr(),
            None if w.offset is None else w.offset.data_ptr(), None if bias is None else bias.data_ptr(),
            y.data_ptr(), x.shape[0], w.in_features, w.padded_out_features, w.group, w.bits, torch.get_num_threads(),
        )  # fmt: skip
        return y if w.padded_out_features == w.out_features else y[:, : w.out_features]
