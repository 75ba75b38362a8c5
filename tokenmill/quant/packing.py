"""The kernel's layout of a quantized matrix (see tokenmill/kernels/csrc/quant_matmul.c).

Output channels in tiles of 16, four tiles a block (N padded to a multiple of 64), input channels
in pairs, a block's four tiles side by side for each pair: int8 [N/64, K/2, 4, 2, 16] bytes, int4
[N/64, K/2, 4, 16] bytes (k even in the low nibble). Scales and offsets are [K / group, N] so one
tile's 16 scales are one vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenmill.quant.tensor import QuantizedTensor

TILE = 16
BLOCK = 64  # four tiles, read by the kernel as one stream


@dataclass(frozen=True)
class PackedWeight:
    data: torch.Tensor  # uint8, laid out as above
    scale: torch.Tensor  # [K / group, N_pad] float32
    offset: torch.Tensor | None
    bits: int
    out_features: int  # N, before padding
    in_features: int

    @property
    def group(self) -> int:
        return self.in_features // self.scale.shape[0]

    @property
    def padded_out_features(self) -> int:
        return self.scale.shape[1]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The float32 rows W[ids] ([len(ids), K]): an embedding lookup into the same matrix."""
        block, tile, lane = ids // BLOCK, ids % BLOCK // TILE, ids % TILE
        if self.bits == 8:  # [T, K/2, 2] bytes
            q = self.data[block, :, tile, :, lane].flatten(1).view(torch.int8).float()
        else:  # [T, K/2] bytes
            raw = self.data[block, :, tile, lane]
            q = torch.stack((raw & 15, raw >> 4), dim=-1).flatten(1).float()
        rows = q * self.scale[:, ids].t().repeat_interleave(self.group, dim=1)
        if self.offset is not None:
            rows += self.offset[:, ids].t().repeat_interleave(self.group, dim=1)
        return rows


def pack(t: QuantizedTensor) -> PackedWeight:
    n, k = t.shape
    if k % 2 or t.group % 2:
        raise ValueError(f"the quantized kernel needs an even number of input channels per group, got {t.group}")
    n_pad = -(-n // BLOCK) * BLOCK
    pairs = _pad_rows(t.q, n_pad).view(torch.uint8).view(n_pad // BLOCK, BLOCK // TILE, TILE, k // 2, 2)
    if t.bits == 8:
        data = pairs.permute(0, 3, 1, 4, 2).contiguous()
    elif t.bits == 4:
        data = (pairs[..., 0] | (pairs[..., 1] << 4)).permute(0, 3, 1, 2).contiguous()
    else:
        raise ValueError(f"bits must be 8 or 4, got {t.bits}")
    scale = _pad_rows(t.scale, n_pad).t().contiguous()
    offset = None if t.offset is None else _pad_rows(t.offset, n_pad).t().contiguous()
    return PackedWeight(data, scale, offset, t.bits, n, k)


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])]) if rows > x.shape[0] else x
