"""The quantized matrix kernel against a float64 reference, at the default model's layer shapes."""

import pytest
import torch

from tokenmill.kernels.quant_matmul import QuantMatmul
from tokenmill.quant.packing import pack
from tokenmill.quant.tensor import QuantizedTensor, quantize_int4, quantize_int8

KERNEL = QuantMatmul.load()
pytestmark = pytest.mark.skipif(KERNEL is None, reason="no C compiler for the quantized kernel")

# (out, in): q/k/v fused, o_proj, gate/up fused, down_proj, the output layer; and one needing padding.
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576), (200, 96)]
# 1 and 2 rows take the few-rows path; 5, 13 and 40 the 12-row blocks with every kind of tail.
ROWS = [1, 2, 5, 13, 40]


def reference(x: torch.Tensor, w: QuantizedTensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ w.dequantize().double().t()
    return y if bias is None else y + bias.double()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).norm() / expected.norm())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_matches_float64_on_the_quantized_values(shape, bits):
    """Against the exact product of the dequantized matrix: only float32 summation error remains."""
    gen = torch.Generator().manual_seed(shape[0] + bits)
    w = torch.randn(shape, generator=gen)
    qw = quantize_int8(w) if bits == 8 else quantize_int4(w, 32)
    bias = torch.randn(shape[0], generator=gen)
    packed = pack(qw)
    for rows in ROWS if shape[0] < 10000 else [1, 13]:
        x = torch.randn(rows, shape[1], generator=gen)
        for b in (None, bias):
            padded = None if b is None else torch.nn.functional.pad(b, (0, packed.padded_out_features - shape[0]))
            assert relative_error(KERNEL(x, packed, padded), reference(x, qw, b)) < 2e-6


@pytest.mark.parametrize("bits, bound", [(8, 0.01), (4, 0.1)])
def test_kernel_against_the_float_weights_within_the_format_error(bits, bound):
    """Against the unquantized float64 product: the error is the format's rounding. For Gaussian
    weights, int8 per channel rounds to ~0.4% of a row's spread, int4 per 32 to ~5%."""
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(3072, 576, generator=gen)
    x = torch.randn(7, 576, generator=gen)
    qw = quantize_int8(w) if bits == 8 else quantize_int4(w, 32)
    error = relative_error(KERNEL(x, pack(qw)), x.double() @ w.double().t())
    assert 0 < error < bound


def test_strided_rows_batch_dimensions_and_gguf_style_groups():
    """Rows read through a stride (a view into a fused projection) or with batch dimensions; 8-bit
    values with offsets and groups of 16, as Q6_K and fused mixed formats give."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-32, 32, (576, 576), generator=gen, dtype=torch.int8)
    qw = QuantizedTensor(q, torch.rand(576, 36, generator=gen), torch.randn(576, 36, generator=gen), 8)
    wide = torch.randn(9, 1000, generator=gen)
    x = wide[:, 100:676]
    packed = pack(qw)
    assert relative_error(KERNEL(x, packed), reference(x, qw, None)) < 2e-6
    torch.testing.assert_close(KERNEL(x.reshape(3, 3, 576), packed), KERNEL(x, packed).view(3, 3, 576))


@pytest.mark.parametrize("bits", [8, 4])
def test_packed_rows_are_the_embedding_lookup(bits):
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(1000, 64, generator=gen)
    qw = quantize_int8(w) if bits == 8 else quantize_int4(w, 32)
    ids = torch.tensor([0, 999, 17, 17, 512])
    torch.testing.assert_close(pack(qw).rows(ids), qw.dequantize()[ids])
