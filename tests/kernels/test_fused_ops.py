"""The fused C kernels against the layers' PyTorch forward, at the real layer shapes."""

import pytest
import torch

from tokenmill.kernels.fused_ops import FusedOps
from tokenmill.model.layers import Linear, RMSNorm, RotaryEmbedding, SiluAndMul

OPS = FusedOps.load()
pytestmark = pytest.mark.skipif(OPS is None, reason="no C compiler for the fused kernels")


def fused(layer):
    layer.fused = OPS
    return layer


@pytest.mark.parametrize("rows", [1, 7, 512])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(rows, with_residual):
    gen = torch.Generator().manual_seed(rows)
    norm = RMSNorm(576, 1e-5)
    norm.weight.data = torch.randn(576, generator=gen)
    x = torch.randn(rows, 576, generator=gen) * 3
    residual = torch.randn(rows, 576, generator=gen) if with_residual else None
    expected, expected_residual = norm(x, residual)
    actual, actual_residual = fused(norm)(x, None if residual is None else residual.clone())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual_residual, expected_residual)


@pytest.mark.parametrize("rows", [1, 300])
def test_rotary_in_place_on_strided_views_of_one_projection(rows):
    gen = torch.Generator().manual_seed(rows)
    heads, kv_heads, dim = 9, 3, 64
    rope = RotaryEmbedding(dim, 8192, 100000.0, None)
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim, generator=gen)
    positions = torch.randint(0, 8192, (rows,), generator=gen)
    q, k, _ = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k = q.view(rows, heads, dim), k.view(rows, kv_heads, dim)
    expected_q, expected_k = rope(positions, q, k)
    actual_q, actual_k = fused(rope)(positions, q, k)
    torch.testing.assert_close(actual_q, expected_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual_k, expected_k, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 64, 512])
def test_silu_and_mul(rows):
    gate_up = torch.randn(rows, 2 * 1536, generator=torch.Generator().manual_seed(rows)) * 6
    torch.testing.assert_close(fused(SiluAndMul())(gate_up), SiluAndMul()(gate_up), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 3, 5, 7, 12, 16, 40])
@pytest.mark.parametrize("shape", [(960, 576), (576, 1536), (49152, 576)])
def test_linear_few_rows_against_float64(rows, shape):
    """The kernel, on strided rows, and the layer (the kernel for FEW_ROWS, else BLAS) match float64."""
    gen = torch.Generator().manual_seed(rows)
    linear = Linear(shape[1], shape[0], bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(shape, generator=gen))
        linear.bias.copy_(torch.randn(shape[0], generator=gen))
    x = torch.randn(rows, 2 * shape[1], generator=gen)[:, : shape[1]]  # rows 2K apart
    expected = x.double() @ linear.weight.double().T + linear.bias.double()
    for actual in (OPS.linear_few_rows(x, linear.weight, linear.bias), fused(linear)(x)):
        assert ((actual.double() - expected).abs().max() / expected.abs().max()) < 1e-6


def test_linear_few_rows_declines_shapes_it_does_not_take():
    x = torch.randn(4, 72)
    assert OPS.linear_few_rows(x, torch.randn(64, 72), None) is None  # K not a multiple of 16
    assert OPS.linear_few_rows(torch.randn(4, 64), torch.randn(66, 64), None) is None  # N not of 4
    linear = Linear(72, 64)
    torch.testing.assert_close(fused(linear)(x), torch.nn.functional.linear(x, linear.weight, linear.bias))
