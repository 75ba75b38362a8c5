"""The kernel's layout of a quantized matrix (see tokenmill/kernels/csrc/quant_matmul.c).

Output channels in tiles of 16, four tiles a block (N padded to a multiple of 64), input channels
in steps, a block's four tiles side by side for each step: int8 [N/64, K/2, 4, 2, 16] bytes, int4
[N/64, K/8, 4, 16] little-endian 32-bit words, channel k + i at bit NIBBLE_SHIFTS[i].
Scales and offsets are [N/64, K / group, 64] floats: a tile's 16 scales are one vector, and a
block's scales for all its groups are one sequential stream beside its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from tokenmill.quant.tensor import QuantizedTensor

TILE = 16
BLOCK = 64  # four tiles, read by the kernel as one stream
STEP = {8: 2, 4: 8}  # input channels a tile's load holds, by bits
# Where an int4 word keeps channels k..k+7: pairs (k + 2j, k + 2j + 1) at bits 4j and 16 + 4j, so a
# shift and a mask give a pair as two 16-bit integers.
NIBBLE_SHIFTS = (0, 16, 4, 20, 8, 24, 12, 28)


@dataclass(frozen=True)
class PackedWeight:
    data: torch.Tensor  # uint8, laid out as above
    scale: torch.Tensor  # [N_pad / 64, K / group, 64] float32
    offset: torch.Tensor | None
    bits: int
    out_features: int  # N, before padding
    in_features: int

    @property
    def group(self) -> int:
        return self.in_features // self.scale.shape[1]

    @property
    def padded_out_features(self) -> int:
        return self.scale.shape[0] * BLOCK

    @cached_property
    def kernel_args(self) -> tuple[int, ...]:
        """The kernel's arguments for this matrix (addresses and sizes), computed once: a decode step
        makes over a hundred calls."""
        offset = 0 if self.offset is None else self.offset.data_ptr()
        return (self.data.data_ptr(), self.scale.data_ptr(), offset, self.in_features, self.padded_out_features,
                self.group, self.bits)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The float32 rows W[ids] ([len(ids), K]): an embedding lookup into the same matrix."""
        block, tile, lane = ids // BLOCK, ids % BLOCK // TILE, ids % TILE
        if self.bits == 8:  # [T, K/2, 2] bytes
            q = self.data[block, :, tile, :, lane].flatten(1).view(torch.int8).float()
        else:  # [T, K/8] words as 4 bytes
            raw = self.data[block, :, tile, lane].long()
            words = (raw << torch.arange(0, 32, 8, device=raw.device)).sum(-1, keepdim=True)
            q = ((words >> torch.tensor(NIBBLE_SHIFTS, device=raw.device)) & 15).flatten(1).float()
        rows = q * self.scale[block, :, ids % BLOCK].repeat_interleave(self.group, dim=1)
        if self.offset is not None:
            rows += self.offset[block, :, ids % BLOCK].repeat_interleave(self.group, dim=1)
        return rows


def pack(t: QuantizedTensor) -> PackedWeight:
    if t.bits not in STEP:
        raise ValueError(f"bits must be 8 or 4, got {t.bits}")
    n, k = t.shape
    if t.group % STEP[t.bits]:
        raise ValueError(f"{t.bits}-bit groups must be a multiple of {STEP[t.bits]} input channels, got {t.group}")
    n_pad = -(-n // BLOCK) * BLOCK
    q = _pad_rows(t.q, n_pad).view(torch.uint8).view(n_pad // BLOCK, BLOCK // TILE, TILE, k // STEP[t.bits], -1)
    if t.bits == 8:  # [block, tile, lane, pair, 2] -> [block, pair, tile, 2, lane]
        data = q.permute(0, 3, 1, 4, 2).contiguous()
    else:  # [block, tile, lane, step, 8] -> words [block, step, tile, lane] -> their 4 bytes
        words = (q.long() << torch.tensor(NIBBLE_SHIFTS)).sum(-1).permute(0, 3, 1, 2)
        data = torch.stack([(words >> shift) & 255 for shift in range(0, 32, 8)], dim=-1).to(torch.uint8)
    scale = _by_block(_pad_rows(t.scale, n_pad))
    offset = None if t.offset is None else _by_block(_pad_rows(t.offset, n_pad))
    return PackedWeight(data, scale, offset, t.bits, n, k)


def _by_block(per_row: torch.Tensor) -> torch.Tensor:
    """[N_pad, groups] -> [N_pad / 64, groups, 64]."""
    return per_row.view(-1, BLOCK, per_row.shape[1]).transpose(1, 2).contiguous()


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])]) if rows > x.shape[0] else x
