"""LoRA on a linear layer, for a whole mixed batch in one pass.

Each adapter resident in a slot has its A and B in the layer's stacked buffers. A step's tokens
are grouped by slot (tokens without an adapter in none); each group takes its adapter's
shrink-then-expand, (x A^T) B^T, added to the base product: an adapter's matrices are read
once per step whatever its number of tokens, as Punica's SGMV does. This PyTorch path is the
reference; the decode capture leaves steps with adapters eager (runner/model_runner.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tokenmill.lora.adapter import LayerDelta


@dataclass
class LoRAStep:
    """Shared by every LoRA layer of a model; the manager sets it before each forward pass."""

    rows: dict[int, torch.Tensor] = field(default_factory=dict)  # slot -> the step's rows that use it


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, max_loras: int, max_rank: int, step: LoRAStep, device: torch.device,
                 dtype: torch.dtype) -> None:  # fmt: skip
        super().__init__()
        self.base, self.step, self.max_rank = base, step, max_rank
        self.in_features, self.out_features = base.in_features, base.out_features
        self.shard_ids = getattr(base, "shard_ids", None)
        self.output_sizes = getattr(base, "output_sizes", None)
        shards = 1 if self.shard_ids is None else len(self.shard_ids)
        # in the activations' dtype, so that a step casts nothing
        shape_a, shape_b = (max_loras, shards * max_rank, self.in_features), (max_loras, self.out_features, shards * max_rank)
        self.register_buffer("lora_a", torch.zeros(shape_a, device=device, dtype=dtype))
        self.register_buffer("lora_b", torch.zeros(shape_b, device=device, dtype=dtype))

    def set_slot(self, slot: int, delta: LayerDelta | None, rank: int) -> None:
        """Puts an adapter's delta in a slot (None: the adapter leaves this layer alone); each
        shard's rank columns start at a multiple of max_rank."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        if delta is None:
            return
        for shard in range(delta.a.shape[0] // rank):
            at = shard * self.max_rank
            self.lora_a[slot, at : at + rank] = delta.a[shard * rank : (shard + 1) * rank]
            self.lora_b[slot, :, at : at + rank] = delta.b[:, shard * rank : (shard + 1) * rank]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for slot, rows in self.step.rows.items():
            part = x.index_select(0, rows)
            y = y.index_add(0, rows, (part @ self.lora_a[slot].T) @ self.lora_b[slot].T)
        return y
