"""dtype bfloat16 on the CPU: bfloat16 weights and matrix products around float32 activations.

A product of a few rows is bound by reading its weight; from BATCHED_ROWS rows on it is bound by
FLOPs, and CPUs with bfloat16 dot products (AMX tiles, AVX-512 BF16) run those four to seven
times faster than float32. So a float layer keeps its weight in bfloat16 (half the bytes a decode
step reads), multiplies a few rows by it in the C kernel (widened to float32 in registers), and
many rows as bfloat16 activations through oneDNN (F.linear), accumulating in float32. A quantized
layer keeps its packed weight for few rows and gains a dequantized bfloat16 copy for many (two
bytes a weight more). Everything between the products (residual stream, norms, attention, KV
cache) stays float32, in the C kernels.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

BATCHED_ROWS = 17  # fewer rows are the few-row kernels' (tokenmill/model/layers.py)


class Bf16Product:
    """x @ W^T (+ bias) for float32 x of many rows, in bfloat16 with float32 accumulation. With
    prepack, W is kept in oneDNN's blocked layout instead (bit for bit the same products, 5-50%
    faster at these shapes), where this PyTorch build has the op: for a weight only this product
    reads, since the few-row kernels need the plain layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, prepack: bool = False) -> None:
        weight = weight.detach().to(torch.bfloat16).contiguous()  # no copy if it is one already
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)
        self.packed = _prepacked(weight) if prepack else None
        self.weight = weight if self.packed is None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        if self.packed is None:
            return F.linear(x, self.weight, self.bias).float()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "").float()


def _prepacked(weight: torch.Tensor) -> torch.Tensor | None:
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight)
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


def takes(product: Bf16Product | None, x: torch.Tensor) -> bool:
    """Whether a layer's bfloat16 product (if it has one) computes x's rows."""
    return product is not None and x.dim() == 2 and x.shape[0] >= BATCHED_ROWS


def enable_bf16_products(model: nn.Module) -> int:
    """Puts every linear layer (float or quantized) on bfloat16 products; returns how many. A float
    layer tied to the embedding gets a weight of its own: the embedding stays float32."""
    layers = [m for m in model.modules() if hasattr(m, "bf16_product")]  # Linear and QuantLinear
    copies: dict[int, Bf16Product] = {}  # by quantized matrix: an output layer may share the embedding's
    for layer in layers:
        if isinstance(layer, nn.Linear):
            layer.weight = nn.Parameter(layer.weight.detach().to(torch.bfloat16), requires_grad=False)
            layer.bf16_product = Bf16Product(layer.weight, layer.bias)  # the same bfloat16 tensor
        else:
            if id(layer.qweight) not in copies:
                copies[id(layer.qweight)] = Bf16Product(_dequantized(layer), _bias(layer), prepack=True)
            layer.bf16_product = copies[id(layer.qweight)]
    logger.info("bfloat16 products for %d linear layers", len(layers))
    return len(layers)


def _dequantized(layer: nn.Module) -> torch.Tensor:
    return layer.packed.rows(torch.arange(layer.out_features))  # exactly the quantized values


def _bias(layer: nn.Module) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias[: layer.out_features]
