"""Building blocks shared by architectures: linear layers, RMSNorm, rotary embedding, SwiGLU.

Each has a plain PyTorch forward; where the model runner binds `fused` (the C kernels, for
float32 on the CPU), the same computation runs as one fused call instead.

A parameter may carry a `weight_loader(param, loaded[, shard_id])` that puts a checkpoint tensor
in place (a merged layer's shard into its rows); the others load with `default_weight_loader`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenmill.model.bf16_products import BATCHED_ROWS, Bf16Product, takes

if TYPE_CHECKING:
    from tokenmill.kernels.fused_ops import FusedOps
    from tokenmill.quant.tensor import QuantizedTensor


FEW_ROWS = range(1, BATCHED_ROWS)  # where the C kernel beats BLAS: it reads the weight once for all the rows


class Linear(nn.Linear):
    """nn.Linear; where `fused` is bound, products of a few rows (a small batch's decode, a few
    speculative tokens' verification) run in the C kernel, which reads the weights only once;
    where `bf16_product` is bound, products of many rows run in bfloat16 (model/bf16_products.py)."""

    fused: FusedOps | None = None
    bf16_product: Bf16Product | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes(self.bf16_product, x):
            return self.bf16_product(x)
        if self.fused is not None and x.dim() == 2 and x.shape[0] in FEW_ROWS:
            y = self.fused.linear_few_rows(x, self.weight, self.bias)
            if y is not None:
                return y
        if self.bf16_product is not None:  # a bfloat16 weight, and a shape the C kernel does not take
            return self.bf16_product(x)
        return super().forward(x)


def shard_rows(layer: nn.Module, shard_id: str) -> tuple[int, int]:
    """(first row, number of rows) of a shard of a merged layer, or of a layer that replaced one and
    kept its shard_ids and output_sizes (a quantized one, a LoRA wrapper)."""
    if shard_id not in layer.shard_ids:
        raise KeyError(f"{shard_id!r} is not a shard of this layer (its shards: {', '.join(layer.shard_ids)})")
    i = layer.shard_ids.index(shard_id)
    return sum(layer.output_sizes[:i]), layer.output_sizes[i]


class MergedLinear(Linear):
    """A Linear whose output rows stack several checkpoint matrices (q | k | v, gate | up), so one
    product computes them all; its weight and bias load each matrix, by shard id, into its rows."""

    def __init__(
        self, in_features: int, output_sizes: Sequence[int], shard_ids: Sequence[str], bias: bool = False
    ) -> None:
        if len(output_sizes) != len(shard_ids):
            raise ValueError(f"{len(shard_ids)} shard ids for {len(output_sizes)} output sizes")
        super().__init__(in_features, sum(output_sizes), bias=bias)
        self.output_sizes, self.shard_ids = tuple(output_sizes), tuple(shard_ids)
        for param in self.parameters(recurse=False):
            param.weight_loader = self.weight_loader

    def shard_rows(self, shard_id: str) -> tuple[int, int]:
        """(first row, number of rows) of a shard: the one place tensor parallelism adds a rank's offset."""
        return shard_rows(self, shard_id)

    def shard_view(self, param: torch.Tensor, shard_id: str | None) -> torch.Tensor:
        """The rows of the weight or the bias that hold a shard (None: all of them)."""
        return param.data if shard_id is None else param.data.narrow(0, *self.shard_rows(shard_id))

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None = None) -> None:
        dest = self.shard_view(param, shard_id)
        check_shape(dest, loaded, "tensor" if shard_id is None else f"shard {shard_id!r}")
        dest.copy_(loaded)


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    """A parameter loaded whole from one checkpoint tensor of its shape."""
    check_shape(param.data, loaded, "tensor")
    param.data.copy_(loaded)


def check_shape(dest: torch.Tensor | torch.Size, loaded: torch.Tensor | QuantizedTensor, what: str) -> None:
    """`dest`: the tensor loaded into, or the shape the checkpoint tensor must have."""
    shape = dest if isinstance(dest, torch.Size) else dest.shape
    if shape != loaded.shape:
        raise ValueError(f"{what} has shape {tuple(loaded.shape)}, expected {tuple(shape)}")


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.fused: FusedOps | None = None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds the residual first (when given) and returns (normalized, new residual)."""
        if self.fused is not None:
            return self.fused.rms_norm(x, residual, self.weight, self.eps)
        if residual is not None:
            x = x + residual
        residual = x
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype), residual


class SiluAndMul(nn.Module):
    """SwiGLU's activation: silu(gate) * up, from the fused [gate | up] projection."""

    def __init__(self) -> None:
        super().__init__()
        self.fused: FusedOps | None = None

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused.silu_and_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE (Hugging Face's layout) over a precomputed cos/sin table; unbounded (a
    streaming model's), the table grows as positions pass its end (rows once made never change, so
    a position's angles do not depend on what else is in the batch)."""

    def __init__(self, head_dim: int, max_position: int, theta: float, scaling: dict[str, Any] | None,
                 unbounded: bool = False) -> None:  # fmt: skip
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        positions = torch.arange(max_position, dtype=torch.float32)
        inv_freq, scaled = _apply_scaling(inv_freq, positions, scaling)
        freqs = torch.outer(scaled, inv_freq)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.position_scale = float(scaled[-1] / positions[-1]) if max_position > 1 else 1.0  # linear scaling's
        self.unbounded = unbounded
        self.fused: FusedOps | None = None

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, H, D], k: [T, KVH, D]; positions: [T]."""
        if self.unbounded and int(positions.max()) >= self.cos.shape[0]:
            self._grow(2 * int(positions.max()) + 1)
        if self.fused is not None:
            return self.fused.rotary(positions, q, k, self.cos, self.sin)
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    def _grow(self, size: int) -> None:
        """The table's rows up to size, the new ones in float64 (angles of large positions)."""
        positions = torch.arange(self.cos.shape[0], size, dtype=torch.float64, device=self.cos.device)
        freqs = torch.outer(positions * self.position_scale, self.inv_freq.double())
        self.cos = torch.cat([self.cos, freqs.cos().float()])
        self.sin = torch.cat([self.sin, freqs.sin().float()])


def bind_fused_ops(model: nn.Module, ops: FusedOps) -> int:
    """Points every fusable layer of the model at the C kernels; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, (Linear, RMSNorm, SiluAndMul, RotaryEmbedding))]
    for layer in layers:
        layer.fused = ops
    return len(layers)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def _apply_scaling(
    inv_freq: torch.Tensor, positions: torch.Tensor, scaling: dict[str, Any] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if scaling is None:
        return inv_freq, positions
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq, positions / scaling["factor"]
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling), positions
    raise NotImplementedError(f"rope scaling type {kind!r} is not supported yet (supported: linear, llama3)")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling: long wavelengths scaled, short kept, smooth between."""
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    is_medium = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return torch.where(is_medium, smoothed, scaled)
