"""Linear and embedding layers over packed quantized weights (tokenmill/quant/packing.py).

On the CPU the matrix product is the C kernel (tokenmill/kernels/quant_matmul.py); on CUDA,
TritonQuantLinear's Triton kernel (tokenmill/kernels/triton_quant_matmul.py). Elsewhere, or where
neither is available, the reference path dequantizes the matrix on every call: correct but slow
(the loader warns).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenmill.kernels.quant_matmul import QuantMatmul
from tokenmill.model.bf16_products import Bf16Product, takes
from tokenmill.quant.gpu_packing import GpuPackedWeight
from tokenmill.quant.packing import PackedWeight


class QuantLinear(nn.Module):
    bf16_product: Bf16Product | None = None  # products of many rows in bfloat16, where bound

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None, kernel: QuantMatmul | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.bits, self.group = weight.bits, weight.group
        # Buffers, so .to(device) moves them and state_dict holds them.
        self.register_buffer("qweight", weight.data)
        self.register_buffer("scales", weight.scale)
        self.register_buffer("offsets", weight.offset)
        self.register_buffer("bias", None if bias is None else _pad(bias.float(), weight.padded_out_features))
        self.kernel = kernel
        self.packed = weight

    def _apply(self, fn, recurse: bool = True) -> QuantLinear:
        """After .to() and friends, the packed view follows the moved buffers (built once, not per call)."""
        super()._apply(fn, recurse)
        self.packed = PackedWeight(self.qweight, self.scales, self.offsets, self.bits, self.out_features,
                                   self.in_features)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes(self.bf16_product, x):
            return self.bf16_product(x)
        if self.kernel is not None and x.device.type == "cpu" and x.dtype == torch.float32:
            return self.kernel(x, self.packed, self.bias)
        bias = None if self.bias is None else self.bias[: self.out_features]
        return F.linear(x, self.packed.rows(torch.arange(self.out_features, device=x.device)).to(x.dtype), bias)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.packed.rows(ids)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group}"


class TritonQuantLinear(nn.Module):
    """A quantized linear layer on CUDA: the Triton kernel over the GPU layout. Its scales,
    offsets and bias stay float32 whatever dtype the model is cast to (bfloat16 scales would
    lose a third of a percent)."""

    def __init__(self, weight: GpuPackedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.bits, self.group = weight.bits, weight.group
        self.register_buffer("qweight", weight.q)
        self.register_buffer("scales", weight.scale)
        self.register_buffer("offsets", weight.offset)
        self.register_buffer("bias", None if bias is None else bias.float())
        self.packed = weight

    def _apply(self, fn, recurse: bool = True) -> TritonQuantLinear:
        kept = {name: getattr(self, name) for name in ("scales", "offsets", "bias")}
        super()._apply(fn, recurse)
        for name, tensor in kept.items():
            if tensor is not None:
                setattr(self, name, tensor.to(self.qweight.device))
        self.packed = GpuPackedWeight(self.qweight, self.scales, self.offsets, self.bits)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from tokenmill.kernels.triton_quant_matmul import quant_matmul  # triton: only where this layer runs

        return quant_matmul(x, self.packed, self.bias)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.packed.rows(ids)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group}"


class QuantEmbedding(nn.Module):
    """Token embeddings read from a quantized matrix, often the same one as the output layer's."""

    def __init__(self, source: QuantLinear | TritonQuantLinear) -> None:
        super().__init__()
        self.source = source

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.source.rows(ids)


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.pad(x, (0, size - x.shape[0]))
