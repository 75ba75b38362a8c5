"""QuantizedTensor: a weight matrix as small integers with a scale and offset per group.

The one form every source of quantized weights turns into (load-time int8/int4 quantization and
each GGUF block format), before it is packed for the kernel (tokenmill/quant/packing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantizedTensor:
    """W[n, k] = q[n, k] * scale[n, k // group] + offset[n, k // group]."""

    q: torch.Tensor  # [N, K] int8: -128..127 for bits 8, 0..15 for bits 4
    scale: torch.Tensor  # [N, K // group] float32
    offset: torch.Tensor | None  # like scale; None: zero
    bits: int  # 8 or 4

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def group(self) -> int:
        return self.q.shape[1] // self.scale.shape[1]

    def dequantize(self) -> torch.Tensor:
        """The float32 matrix (for tests and reference paths, never per step)."""
        w = self.q.float() * self.scale.repeat_interleave(self.group, dim=1)
        return w if self.offset is None else w + self.offset.repeat_interleave(self.group, dim=1)

    def map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> QuantizedTensor:
        """The same rows rearranged by fn (which must only move whole rows), e.g. RoPE's permutation."""
        offset = None if self.offset is None else fn(self.offset)
        return QuantizedTensor(fn(self.q), fn(self.scale), offset, self.bits)

    def narrow(self, dim: int, start: int, length: int) -> QuantizedTensor:
        """Rows (dim 0) or columns (dim 1, whole groups only) [start, start + length), as
        torch.Tensor.narrow: a tensor-parallel rank's part, still packed."""
        if dim == 0:
            return self.map_rows(lambda t: t.narrow(0, start, length))
        group = self.group
        if start % group or length % group:
            raise ValueError(f"columns [{start}, {start + length}) cut the matrix's groups of {group}: this split "
                             "cannot keep its quantized form")
        offset = None if self.offset is None else self.offset.narrow(1, start // group, length // group)
        return QuantizedTensor(self.q.narrow(1, start, length), self.scale.narrow(1, start // group, length // group),
                               offset, self.bits)

    def with_group(self, group: int) -> QuantizedTensor:
        """The same values with a smaller group that divides this one (scales repeated)."""
        repeat = self.group // group
        offset = None if self.offset is None else self.offset.repeat_interleave(repeat, dim=1)
        return QuantizedTensor(self.q, self.scale.repeat_interleave(repeat, dim=1), offset, self.bits)


def concat_rows(parts: Sequence[QuantizedTensor]) -> QuantizedTensor:
    """Stacks matrices by rows (q/k/v or gate/up fused into one), exactly: where the parts differ,
    the result takes the wider integers and the smallest group, which represent every part."""
    if len(parts) == 1:
        return parts[0]
    bits = max(p.bits for p in parts)
    group = min(p.group for p in parts)
    if any(p.group % group for p in parts):
        raise ValueError(f"cannot fuse quantized matrices with groups {[p.group for p in parts]}")
    parts = [p.with_group(group) for p in parts]
    has_offset = any(p.offset is not None for p in parts)
    offsets = [p.offset if p.offset is not None else torch.zeros_like(p.scale) for p in parts]
    return QuantizedTensor(
        torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]),
        torch.cat(offsets) if has_offset else None, bits,
    )


def symmetric_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Over the last dimension: (int8 values, float32 scales), x ~ int8 * scale, scale = max |x| / 127.
    The int8 KV cache stores each token's head this way (its C writer follows it step for step)."""
    x = x.float()
    scales = x.abs().amax(dim=-1) / 127
    # A zero vector has scale 0; dividing it by any positive number keeps it 0.
    q = (x / scales.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1)).round_()
    return q.clamp_(-127, 127).to(torch.int8), scales


def quantize_int8(w: torch.Tensor) -> QuantizedTensor:
    """Symmetric, one scale per output channel: q = round(w / scale), |q| <= 127."""
    q, scale = symmetric_int8(w)
    return QuantizedTensor(q, scale[:, None], None, 8)


def quantize_int4(w: torch.Tensor, group: int) -> QuantizedTensor:
    """Asymmetric per group of input channels: 16 levels from the group's min to its max."""
    n, k = w.shape
    if k % group:
        raise ValueError(f"int4 group size {group} does not divide the {k} input channels")
    groups = w.float().reshape(n, k // group, group)
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    scale = (high - low) / 15
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: q = 0, offset holds it
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int8)
    return QuantizedTensor(q.reshape(n, k), scale, low, 4)
