"""GGUF's quantized block formats, read into QuantizedTensor without passing through float32.

Each format is integers with a scale (and for some an offset) per small group of a row, which is
what the quantized kernel runs: Q8_0, Q6_K and Q5_0 as 8-bit integers (groups of 32, 16 and 32; five
bits do not pack into the 4-bit kernel), Q4_0, Q4_1 and Q4_K as 4-bit ones (groups of 32). The values are exactly the format's: tests compare them
with the gguf package's own dequantization.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tokenmill.quant.tensor import QuantizedTensor

# GGMLQuantizationType numbers (gguf.GGMLQuantizationType) and bytes per block of 32 or 256 values.
Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K = 2, 3, 6, 8, 12, 14


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """A float16 field of every block, as float32 [rows, blocks, 1]."""
    return blocks[..., start : start + 2].copy().view(np.float16).astype(np.float32)


def _nibbles_32(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 values: the low nibbles are values 0-15, the high ones 16-31."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _q8_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    return b[..., 2:].view(np.int8), _f16(b, 0), None, 8


def _q4_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    d = _f16(b, 0)
    return _nibbles_32(b[..., 2:]), d, -8 * d, 4


def _q4_1(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    return _nibbles_32(b[..., 4:]), _f16(b, 0), _f16(b, 2), 4


def _q5_0(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """32 values of 5 bits: 4 low bits as Q4_0's nibbles, the fifth of value i in bit i of qh."""
    qh = b[..., 2:6].copy().view("<u4")  # [rows, blocks, 1]
    high = (qh >> np.arange(32, dtype=np.uint32)) & 1
    q = (_nibbles_32(b[..., 6:22]) | (high.astype(np.uint8) << 4)).astype(np.int8) - 16
    return q, _f16(b, 0), None, 8


def _q4_k(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """256 values in 8 groups of 32, each with a 6-bit scale and min, packed in 12 bytes."""
    d, dmin = _f16(b, 0), _f16(b, 2)
    packed = b[..., 4:16].astype(np.int32)
    low, high = packed[..., 0:4], packed[..., 4:8]
    extra = packed[..., 8:12]
    scales = np.concatenate([low & 63, (extra & 15) | ((low >> 6) << 4)], axis=-1)
    mins = np.concatenate([high & 63, (extra >> 4) | ((high >> 6) << 4)], axis=-1)
    qs = b[..., 16:].reshape(*b.shape[:-1], 4, 32)  # 4 chunks of 64 values: low nibbles, then high
    q = np.stack([qs & 15, qs >> 4], axis=-2).reshape(*b.shape[:-1], 256)
    return q, d * scales, -dmin * mins, 4


def _q6_k(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """256 values of 6 bits (4 low bits in ql, 2 high in qh) in 16 groups of 16, int8 scales."""
    ql = b[..., :128].reshape(*b.shape[:-1], 2, 2, 32)  # [half, 32-byte run, l]
    qh = b[..., 128:192].reshape(*b.shape[:-1], 2, 1, 32)
    scales = b[..., 192:208].view(np.int8).astype(np.float32)
    low = np.concatenate([ql & 15, ql >> 4], axis=-2)  # quarters 0-3 of each half
    high = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]) & 3
    q = (low | (high << 4)).astype(np.int8) - 32
    return q.reshape(*b.shape[:-1], 256), _f16(b, 208) * scales, None, 8


_FORMATS: dict[int, tuple[int, int, Callable]] = {  # type: (values per block, bytes per block, reader)
    Q8_0: (32, 34, _q8_0), Q4_0: (32, 18, _q4_0), Q4_1: (32, 20, _q4_1), Q5_0: (32, 22, _q5_0),
    Q4_K: (256, 144, _q4_k), Q6_K: (256, 210, _q6_k),
}  # fmt: skip


def is_supported(tensor_type: int) -> bool:
    return tensor_type in _FORMATS


def read_quantized(raw: np.ndarray, tensor_type: int, rows: int, cols: int) -> QuantizedTensor:
    """A GGUF tensor's raw bytes ([rows, bytes per row]) as a [rows, cols] QuantizedTensor."""
    per_block, block_bytes, reader = _FORMATS[tensor_type]
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, cols // per_block, block_bytes)
    q, scale, offset, bits = reader(blocks)
    groups = scale.shape[1] * scale.shape[2]

    def per_group(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values.reshape(rows, groups), dtype=np.float32))

    q = torch.from_numpy(np.ascontiguousarray(q.reshape(rows, cols).astype(np.int8)))
    return QuantizedTensor(q, per_group(scale), None if offset is None else per_group(offset), bits)
