"""Reading GGUF files: metadata as plain Python values; tensors dequantized to torch, or kept in
their quantized formats where the quantized kernel runs them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from tokenmill.quant.tensor import QuantizedTensor

_PLAIN_TYPES = (0, 1)  # GGMLQuantizationType F32 and F16: numpy reads them directly


class GGUFError(ValueError):
    """A GGUF file that cannot be read: missing, truncated or not GGUF at all."""


@dataclass
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    _reader: Any

    def tensor_names(self) -> set[str]:
        return {tensor.name for tensor in self._reader.tensors}

    def tensors(self, keep_quantized: bool = False) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
        """Yields (gguf tensor name, tensor) in the file's order: float32, dequantized on the fly, or
        with keep_quantized, a QuantizedTensor for each matrix in a format the kernel runs."""
        import gguf
        import torch  # here, not above: reading the metadata (a tokenizer) needs no torch

        from tokenmill.quant.gguf_formats import is_supported, read_quantized

        for tensor in self._reader.tensors:
            data = np.asarray(tensor.data)
            # GGUF lists dimensions fastest-first; numpy's shape is the reverse.
            shape = tuple(int(d) for d in reversed(tensor.shape))
            if keep_quantized and len(shape) == 2 and is_supported(tensor.tensor_type):
                yield tensor.name, read_quantized(data, tensor.tensor_type, *shape)
                continue
            if tensor.tensor_type not in _PLAIN_TYPES:
                data = gguf.quants.dequantize(data, tensor.tensor_type)
            yield tensor.name, torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape))


def read_gguf(path: str | Path) -> GGUFFile:
    import gguf

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(path)
        metadata = {name: _field_value(field) for name, field in reader.fields.items()}
    except Exception as exc:  # the gguf package raises many kinds of error on a bad file
        raise GGUFError(f"{path} is not a readable GGUF file: {exc}") from exc
    if "general.architecture" not in metadata:
        raise GGUFError(f"{path} has no general.architecture: not a model GGUF")
    return GGUFFile(path, metadata, reader)


def _field_value(field: Any) -> Any:
    value = field.contents()
    if isinstance(value, np.generic):
        return value.item()
    return value
