"""The fused C elementwise kernels against the layers' PyTorch forward, at the real layer shapes."""

import pytest
import torch

from tokenmill.kernels.fused_ops import FusedOps
from tokenmill.model.layers import RMSNorm, RotaryEmbedding, SiluAndMul

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
