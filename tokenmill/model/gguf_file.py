"""Reading GGUF files: metadata as plain Python values; tensors dequantized to torch, or kept in
their quantized formats where the quantized kernel runs them.

The header is parsed here, in one pass over a memory map: the gguf package's reader makes a numpy
view for every element of every array, which for a 262k-token vocabulary (Gemma's) takes minutes.
Its block sizes and dequantization are used as they are.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from tokenmill.quant.tensor import QuantizedTensor

_PLAIN_TYPES = {0: np.float32, 1: np.float16}  # GGMLQuantizationType F32 and F16: numpy reads them directly
# GGUF metadata value types: numpy dtypes of the scalars; 8 is a string, 9 an array.
_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
            12: "<f8"}  # fmt: skip
_STRUCT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """A GGUF file that cannot be read: missing, truncated or not GGUF at all."""


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # numpy's order: slowest dimension first
    tensor_type: int  # GGMLQuantizationType
    data: np.ndarray  # plain types: their values; quantized ones: [rows, bytes per row] of uint8


@dataclass
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensor_infos: list[GGUFTensor]

    def tensor_names(self) -> set[str]:
        return {tensor.name for tensor in self.tensor_infos}

    def tensors(self, keep_quantized: bool = False) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
        """Yields (gguf tensor name, tensor) in the file's order: float32, dequantized on the fly, or
        with keep_quantized, a QuantizedTensor for each matrix in a format the kernel runs."""
        import gguf
        import torch  # here, not above: reading the metadata (a tokenizer) needs no torch

        from tokenmill.quant.gguf_formats import is_supported, read_quantized

        for tensor in self.tensor_infos:
            if keep_quantized and len(tensor.shape) == 2 and is_supported(tensor.tensor_type):
                yield tensor.name, read_quantized(tensor.data, tensor.tensor_type, *tensor.shape)
                continue
            data = tensor.data
            if tensor.tensor_type not in _PLAIN_TYPES:
                data = gguf.quants.dequantize(data, tensor.tensor_type)
            yield tensor.name, torch.from_numpy(np.array(data, dtype=np.float32).reshape(tensor.shape))


def read_gguf(path: str | Path) -> GGUFFile:
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"GGUF file not found: {path}")
    try:
        metadata, tensors = _parse(np.memmap(path, dtype=np.uint8, mode="r"))
    except (ValueError, KeyError, IndexError, struct.error, UnicodeDecodeError, OverflowError) as exc:
        raise GGUFError(f"{path} is not a readable GGUF file: {exc}") from exc
    if "general.architecture" not in metadata:
        raise GGUFError(f"{path} has no general.architecture: not a model GGUF")
    return GGUFFile(path, metadata, tensors)


class _Cursor:
    """Reads little-endian GGUF values from a byte buffer, front to back (struct, not numpy: the
    header is hundreds of thousands of small values)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.buffer, self.pos = data, memoryview(data), 0

    def take(self, count: int) -> np.ndarray:
        if count < 0 or self.pos + count > len(self.data):
            raise ValueError(f"truncated at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def scalar(self, code: str) -> Any:
        (value,) = struct.unpack_from(code, self.buffer, self.pos)
        self.pos += struct.calcsize(code)
        return value

    def string(self) -> str:
        size = self.scalar("<Q")
        if self.pos + size > len(self.data):
            raise ValueError(f"truncated at byte {self.pos}")
        text = str(self.buffer[self.pos : self.pos + size], "utf-8")
        self.pos += size
        return text

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item == _STRING:
                return [self.string() for _ in range(count)]
            if item not in _SCALARS:
                return [self.value(item) for _ in range(count)]  # arrays of arrays: rare and short
            size = np.dtype(_SCALARS[item]).itemsize
            return self.take(size * count).view(_SCALARS[item]).tolist()
        if kind not in _SCALARS:
            raise ValueError(f"unknown metadata value type {kind}")
        return self.scalar(_STRUCT[kind])


def _parse(data: np.ndarray) -> tuple[dict[str, Any], list[GGUFTensor]]:
    import gguf

    cursor = _Cursor(data)
    if bytes(cursor.take(4)) != b"GGUF":
        raise ValueError("no GGUF magic number")
    version = cursor.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (2 and 3 are read)")
    num_tensors, num_fields = cursor.scalar("<Q"), cursor.scalar("<Q")
    metadata = {}
    for _ in range(num_fields):
        name = cursor.string()
        metadata[name] = cursor.value(cursor.scalar("<I"))
    infos = []
    for _ in range(num_tensors):
        name = cursor.string()
        dims = [cursor.scalar("<Q") for _ in range(cursor.scalar("<I"))]
        infos.append((name, tuple(reversed(dims)), cursor.scalar("<I"), cursor.scalar("<Q")))
    alignment = metadata.get("general.alignment", 32)
    start = -(-cursor.pos // alignment) * alignment
    tensors = []
    for name, shape, kind, offset in infos:
        block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        count = int(np.prod(shape))
        raw = _Cursor(data[start + offset :]).take(count // block * block_bytes)
        if kind in _PLAIN_TYPES:
            values = raw.view(_PLAIN_TYPES[kind]).reshape(shape)
        else:
            values = raw.reshape(-1, shape[-1] // block * block_bytes)
        tensors.append(GGUFTensor(name, shape, kind, values))
    return metadata, tensors
