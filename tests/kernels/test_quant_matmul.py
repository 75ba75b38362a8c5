"""The quantized matrix kernel against a float64 reference, at the default model's layer shapes."""

import pytest
import torch

from tokenmill.kernels.quant_matmul import QuantMatmul
from tokenmill.quant.packing import pack
from tokenmill.quant.tensor import QuantizedTensor, quantize_int4, quantize_int8

KERNEL = QuantMatmul.load()
pytestmark = pytest.mark.skipif(KERNEL is None, reason="no C compiler for the quantized kernel")


def kernel_for(int4_path: str) -> QuantMatmul:
    """The kernel with 4-bit weights on float activations, or on int16 ones where the CPU has
    integer dot products."""
    if int4_path == "integer" and not KERNEL.integer_path_for_int4:
        pytest.skip("this CPU has no integer dot products (AVX-512 VNNI)")
    kernel = QuantMatmul.load()
    kernel.integer_path_for_int4 = int4_path == "integer"
    return kernel


INT4_PATHS = ["float", "integer"]

# (out, in): q/k/v fused, o_proj, gate/up fused, down_proj, the output layer; and one needing padding.
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576), (200, 96)]
# 1 and 2 rows take the few-rows path; 5, 13 and 40 the 12-row blocks with every kind of tail.
ROWS = [1, 2, 5, 13, 40]


def reference(x: torch.Tensor, w: QuantizedTensor, bias: torch.Tensor | None, integer_path=False) -> torch.Tensor:
    """The exact product of the dequantized matrix; for the integer path, as it computes it: per
    group, scale * dx * (q . xq) + offset * (the group's float activation sum), where xq is x
    rounded half to even in steps of dx = max |x| / 32767."""
    if not integer_path:
        y = x.double() @ w.dequantize().double().t()
    else:
        groups = x.view(x.shape[0], -1, w.group)
        dx = groups.abs().amax(-1) / 32767
        xq = (groups / dx.clamp_min(torch.finfo(torch.float32).tiny)[..., None]).round()
        groups = groups.double()
        dots = torch.einsum("mgk,ngk->mng", xq.double(), w.q.double().view(w.shape[0], -1, w.group))
        y = (dots * w.scale.double() * dx.double()[:, None, :]).sum(-1)
        if w.offset is not None:
            y += (groups.sum(-1)[:, None, :] * w.offset.double()).sum(-1)
    return y if bias is None else y + bias.double()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).norm() / expected.norm())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("bits, int4_path", [(8, "float"), (4, "float"), (4, "integer")])
def test_kernel_matches_float64_on_the_quantized_values(shape, bits, int4_path):
    """Against the exact product of the dequantized matrix (and rounded activations, for the integer
    path): only float32 summation error remains."""
    kernel, integer_path = kernel_for(int4_path), int4_path == "integer"
    gen = torch.Generator().manual_seed(shape[0] + bits)
    w = torch.randn(shape, generator=gen)
    qw = quantize_int8(w) if bits == 8 else quantize_int4(w, 32)
    bias = torch.randn(shape[0], generator=gen)
    packed = pack(qw)
    for rows in ROWS if shape[0] < 10000 else [1, 13]:
        x = torch.randn(rows, shape[1], generator=gen)
        for b in (None, bias):
            padded = None if b is None else torch.nn.functional.pad(b, (0, packed.padded_out_features - shape[0]))
            assert relative_error(kernel(x, packed, padded), reference(x, qw, b, integer_path)) < 2e-6


@pytest.mark.parametrize("bits, int4_path, bound", [(8, "float", 0.01), (4, "float", 0.1), (4, "integer", 0.1)])
def test_kernel_against_the_float_weights_within_the_format_error(bits, int4_path, bound):
    """Against the unquantized float64 product: the error is the format's rounding. For Gaussian
    weights, int8 per channel rounds to ~0.4% of a row's spread, int4 per 32 to ~5%."""
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(3072, 576, generator=gen)
    x = torch.randn(7, 576, generator=gen)
    qw = quantize_int8(w) if bits == 8 else quantize_int4(w, 32)
    error = relative_error(kernel_for(int4_path)(x, pack(qw)), x.double() @ w.double().t())
    assert 0 < error < bound


def test_integer_path_activations_cost_almost_nothing():
    """int16 activations (steps of max |x| / 32767 per group) stay within 1e-3 of the float path's
    exact product, even with an outlier channel 100x the others, as this model's activations have
    (the int4 weights' own rounding costs ~5e-2)."""
    kernel = kernel_for("integer")
    gen = torch.Generator().manual_seed(5)
    qw = quantize_int4(torch.randn(3072, 576, generator=gen), 32)
    x = torch.randn(13, 576, generator=gen)
    x[:, 7] *= 100
    error = relative_error(kernel(x, pack(qw)), reference(x, qw, None))
    assert 0 < error < 1e-3


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


@pytest.mark.parametrize("group", [16, 64, 576])
@pytest.mark.parametrize("int4_path", INT4_PATHS)
def test_int4_groups_of_every_size_on_strided_rows(group, int4_path):
    """The group size is configurable: groups of 16 (the smallest) to a whole row, on rows read
    through a stride; for the integer path the activations round per group too."""
    kernel = kernel_for(int4_path)
    gen = torch.Generator().manual_seed(group)
    qw = quantize_int4(torch.randn(576, 576, generator=gen), group)
    wide = torch.randn(13, 1000, generator=gen)
    for rows in (1, 2, 13):
        x = wide[:rows, 100:676]
        expected = reference(x, qw, None, int4_path == "integer")
        assert relative_error(kernel(x, pack(qw)), expected) < 2e-6
