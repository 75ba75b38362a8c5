"""The GPU kernel's layout of a quantized matrix (kernels/triton_quant_matmul.py): rows as they
are, int4 two channels a byte. Made once at load, from the QuantizedTensor every source gives."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenmill.quant.tensor import QuantizedTensor

GROUP_MULTIPLE = 16  # the kernel's tile of input channels (16 or 32) lies inside one group


@dataclass(frozen=True)
class GpuPackedWeight:
    q: torch.Tensor  # [N, K] int8 (bits 8), or [N, K / 2] uint8: channel 2i low nibble, 2i + 1 high (bits 4)
    scale: torch.Tensor  # [N, K / group] float32
    offset: torch.Tensor | None  # like scale; None: zero
    bits: int

    @property
    def out_features(self) -> int:
        return self.q.shape[0]

    @property
    def in_features(self) -> int:
        return self.q.shape[1] * (2 if self.bits == 4 else 1)

    @property
    def group(self) -> int:
        return self.in_features // self.scale.shape[1]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The float32 rows W[ids]: an embedding lookup into the same matrix."""
        q = self.q[ids]
        if self.bits == 4:
            q = torch.stack((q & 15, q >> 4), dim=-1).flatten(-2)
        rows = q.float() * self.scale[ids].repeat_interleave(self.group, dim=-1)
        if self.offset is not None:
            rows += self.offset[ids].repeat_interleave(self.group, dim=-1)
        return rows


def pack_for_gpu(t: QuantizedTensor) -> GpuPackedWeight:
    if t.group % GROUP_MULTIPLE:
        raise ValueError(f"the GPU kernel needs groups of a multiple of {GROUP_MULTIPLE} input channels, got {t.group}")
    if t.bits == 8:
        q = t.q.contiguous()
    elif t.bits == 4:
        nibbles = t.q.to(torch.uint8)
        q = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).contiguous()
    else:
        raise ValueError(f"bits must be 8 or 4, got {t.bits}")
    offset = None if t.offset is None else t.offset.float().contiguous()
    return GpuPackedWeight(q, t.scale.float().contiguous(), offset, t.bits)
