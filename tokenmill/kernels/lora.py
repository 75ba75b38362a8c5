"""csrc/lora.c from Python: a mixed batch's LoRA delta for one layer in one C call, which a
captured decode step records and replays like any other kernel. tokenmill/lora/layers.py holds
the PyTorch version, which the tests compare against."""

from __future__ import annotations

import ctypes

import torch

from tokenmill.kernels.cpu_build import load_library
from tokenmill.kernels.launch import Kernel

_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


class LoRAKernel:
    def __init__(self, library: ctypes.CDLL) -> None:
        self._delta = Kernel(library.lora_delta_f32, [_ptr, _i64, _ptr, _i64, _ptr, _i64, _ptr, _ptr] + [_i64] * 4
                             + [_ptr, _i64, _int])  # fmt: skip

    @classmethod
    def load(cls) -> LoRAKernel | None:
        library = load_library("lora")
        return None if library is None else cls(library)

    def add_delta(self, x: torch.Tensor, y: torch.Tensor, token_slots: torch.Tensor, lora_a: torch.Tensor,
                  lora_bt: torch.Tensor, shard_bounds: torch.Tensor, max_rank: int) -> bool:  # fmt: skip
        """y[t] += (x[t] @ lora_a[s].T) @ lora_bt[s] for each row t whose slot s = token_slots[t] is
        not -1, in place. x [T, in], y [T, out] float32 rows; token_slots int32 [T]; lora_a [S, R, in]
        and lora_bt [S, R, out] float32, R = shards * max_rank; shard_bounds int64 [shards + 1], the
        output columns each shard owns. False (nothing done) where the kernel does not take the tensors."""
        tensors = (x, y, lora_a, lora_bt)
        if (any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors) or x.stride(1) != 1
                or y.stride(1) != 1 or not lora_a.is_contiguous() or not lora_bt.is_contiguous()):  # fmt: skip
            return False
        self._delta(x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0), token_slots.data_ptr(), x.shape[0],
                    lora_a.data_ptr(), lora_bt.data_ptr(), lora_a.shape[0], x.shape[1], y.shape[1], max_rank,
                    shard_bounds.data_ptr(), len(shard_bounds) - 1, torch.get_num_threads())
        return True
