"""The Triton quantized product against the dequantized matrix, and the GPU layout's rows:
int8 per output channel, int4 in groups with offsets, GGUF-like groups of 16; one row (decode) to
many (prefill); float32 and bfloat16 activations. Without a GPU it runs under Triton's interpreter."""

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is imported

pytest.importorskip("triton")

from tokenmill.quant.gpu_packing import pack_for_gpu  # noqa: E402
from tokenmill.quant.linear import QuantEmbedding, TritonQuantLinear  # noqa: E402
from tokenmill.quant.tensor import QuantizedTensor, quantize_int4, quantize_int8  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _weights(kind: str, n: int = 80, k: int = 96) -> QuantizedTensor:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(0))
    if kind == "int8":
        return quantize_int8(w)
    if kind == "int4":
        return quantize_int4(w, 32)
    t = quantize_int4(w, 16)  # GGUF's Q6_K-like groups of 16
    return QuantizedTensor(t.q, t.scale, t.offset, t.bits)


@pytest.mark.parametrize("kind", ["int8", "int4", "int4 groups of 16"])
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_product_matches_the_dequantized_matrix(kind, rows):
    t = _weights(kind)
    bias = torch.randn(t.shape[0])
    layer = TritonQuantLinear(pack_for_gpu(t), bias).to(DEVICE)
    x = torch.randn(rows, t.shape[1], generator=torch.Generator().manual_seed(1))
    expected = F.linear(x, t.dequantize(), bias)
    torch.testing.assert_close(layer(x.to(DEVICE)).cpu(), expected, rtol=1e-4, atol=1e-4)


def test_bfloat16_activations_and_float32_scales_after_a_cast():
    t = _weights("int4")
    layer = TritonQuantLinear(pack_for_gpu(t), None).to(DEVICE, torch.bfloat16)
    assert layer.scales.dtype == torch.float32 and layer.qweight.dtype == torch.uint8
    x = torch.randn(3, t.shape[1], generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    y = layer(x.to(DEVICE))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.cpu().float(), F.linear(x.float(), t.dequantize()), rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_embedding_rows_are_the_dequantized_rows(kind):
    t = _weights(kind)
    embedding = QuantEmbedding(TritonQuantLinear(pack_for_gpu(t), None))
    ids = torch.tensor([0, 7, 79, 7])
    torch.testing.assert_close(embedding(ids), t.dequantize()[ids])


def test_quantize_model_installs_gpu_layers_that_match_the_dequantized_model():
    from torch import nn

    from tokenmill.quant.apply import quantize_model

    torch.manual_seed(3)
    model = nn.ModuleDict({"embed": nn.Embedding(64, 64), "proj": nn.Linear(64, 96), "lm_head": nn.Linear(64, 64)})
    reference = {name: module.weight.detach().clone() for name, module in model.items()}
    quantize_model(model, "int4", 32, kernel=None, gpu=True)
    assert isinstance(model["proj"], TritonQuantLinear) and isinstance(model["embed"], QuantEmbedding)
    x = torch.randn(4, 64)
    # within int4's rounding of the float weights
    assert (model["proj"](x) - F.linear(x, reference["proj"], model["proj"].bias)).abs().max() < 0.5
    assert model["lm_head"].bits == 8 and model["proj"].bits == 4  # the output layer stays int8, as on the CPU
