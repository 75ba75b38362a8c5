"""LoRA on a linear layer, for a whole mixed batch in one pass.

Each adapter resident in a slot has its A and B^T in the layer's stacked buffers. A step's tokens
are grouped by slot (tokens without an adapter in none); each group takes its adapter's
shrink-then-expand, (x A^T) B^T, added to the base product: an adapter's matrices are read
once per step whatever its number of tokens, as Punica's SGMV does. On the CPU in float32 that
is one C call per layer (kernels/lora.py), which a captured decode step records and replays; on
CUDA two Triton launches (kernels/triton_lora.py); elsewhere the PyTorch loop below, which is
also the kernels' reference.
"""

from __future__ import annotations

import itertools
from typing import Protocol

import torch
from torch import nn

from tokenmill.lora.adapter import LayerDelta
from tokenmill.model.parallel_layers import RowParallelLinear

# A step of up to this many rows reads its rows' slots from one buffer that never moves, so that a
# captured decode step (at most runner/step_graph.py's MAX_ROWS rows) replays with the next step's slots.
STATIC_ROWS = 256


class DeltaKernel(Protocol):
    def add_delta(self, x: torch.Tensor, y: torch.Tensor, token_slots: torch.Tensor, lora_a: torch.Tensor,
                  lora_bt: torch.Tensor, shard_bounds: torch.Tensor, max_rank: int) -> bool:
        """y[t] += (x[t] @ lora_a[s].T) @ lora_bt[s] for each row t whose slot s is not -1, in place;
        False (nothing done) where the kernel does not take the tensors."""
        ...


class LoRAStep:
    """Shared by every LoRA layer of a model; the manager sets it before each forward pass."""

    def __init__(self, device: torch.device) -> None:
        self._static = torch.full((STATIC_ROWS,), -1, dtype=torch.int32, device=device)
        self.slots: torch.Tensor | None = None  # int32, each row's slot (-1: none); None if no row has one
        self._rows: dict[int, torch.Tensor] | None = None

    def set(self, token_slots: list[int] | None) -> None:
        self._rows = None
        if token_slots is None:
            self.slots = None
            return
        values = torch.tensor(token_slots, dtype=torch.int32)
        if len(values) > STATIC_ROWS:
            self.slots = values.to(self._static.device)
            return
        self.slots = self._static[: len(values)]
        self.slots.copy_(values)

    def rows(self) -> dict[int, torch.Tensor]:
        """The step's rows grouped by slot, for the PyTorch path (computed once a step)."""
        if self._rows is None:
            slots = self.slots.long()
            self._rows = {s: (slots == s).nonzero().squeeze(1) for s in slots.unique().tolist() if s >= 0}
        return self._rows


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, max_loras: int, max_rank: int, step: LoRAStep, kernel: DeltaKernel | None,
                 device: torch.device, dtype: torch.dtype) -> None:  # fmt: skip
        super().__init__()
        self.base, self.step, self.kernel, self.max_rank = base, step, kernel, max_rank
        # a row-parallel layer's delta is partial like its product: both join its one sum over ranks
        self.row_parallel = isinstance(base, RowParallelLinear)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.shard_ids = getattr(base, "shard_ids", None)
        self.output_sizes = getattr(base, "output_sizes", None)
        sizes = self.output_sizes or [self.out_features]
        shards = len(sizes)
        # each shard's output columns, for the kernel, which skips the zeros between shards
        self.register_buffer("shard_bounds", torch.tensor([0, *itertools.accumulate(sizes)], dtype=torch.int64))
        # in the activations' dtype, so that a step casts nothing; B transposed, so that the
        # kernel's expansion adds contiguous rows
        shape_a, shape_bt = (max_loras, shards * max_rank, self.in_features), (max_loras, shards * max_rank, self.out_features)
        self.register_buffer("lora_a", torch.zeros(shape_a, device=device, dtype=dtype))
        self.register_buffer("lora_bt", torch.zeros(shape_bt, device=device, dtype=dtype))

    def set_slot(self, slot: int, delta: LayerDelta | None, rank: int) -> None:
        """Puts an adapter's delta in a slot (None: the adapter leaves this layer alone); each
        shard's rank rows start at a multiple of max_rank."""
        self.lora_a[slot].zero_()
        self.lora_bt[slot].zero_()
        if delta is None:
            return
        for shard in range(delta.a.shape[0] // rank):
            at, cols = shard * self.max_rank, slice(shard * rank, (shard + 1) * rank)
            self.lora_a[slot, at : at + rank] = delta.a[cols]
            self.lora_bt[slot, at : at + rank] = delta.b[:, cols].T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots = self.step.slots
        if slots is None:
            return self.base(x)
        y = self.base.partial(x) if self.row_parallel else self.base(x)
        if self.kernel is None or x.dim() != 2 or not self.kernel.add_delta(
                x, y, slots, self.lora_a, self.lora_bt, self.shard_bounds, self.max_rank):  # fmt: skip
            for slot, rows in self.step.rows().items():
                part = x.index_select(0, rows)
                y = y.index_add(0, rows, (part @ self.lora_a[slot].T) @ self.lora_bt[slot])
        return self.base.tp.all_reduce(y) if self.row_parallel else y
