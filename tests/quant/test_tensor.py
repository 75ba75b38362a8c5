"""Load-time quantization and the fusing of quantized matrices."""

import pytest
import torch

from tokenmill.quant.tensor import QuantizedTensor, concat_rows, quantize_int4, quantize_int8


def test_int8_rounds_each_weight_to_half_a_step_of_its_row():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, 64)[:, None]
    qw = quantize_int8(w)
    assert qw.q.abs().max() == 127 and qw.group == 256
    assert ((qw.dequantize() - w).abs() <= qw.scale / 2 * 1.0001).all()


def test_int4_rounds_each_weight_to_half_a_step_of_its_group():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    w[3, :32] = 0.5  # a constant group
    qw = quantize_int4(w, 32)
    assert qw.q.min() == 0 and qw.q.max() == 15 and qw.group == 32
    assert ((qw.dequantize() - w).abs() <= qw.scale.repeat_interleave(32, 1) / 2 * 1.0001).all()
    assert (qw.dequantize()[3, :32] == 0.5).all()
    with pytest.raises(ValueError, match="does not divide"):
        quantize_int4(w, 48)


def test_int4_recovers_a_4_bit_grid_exactly():
    """Weights already on a 16-level grid per group (a Q4_1 model's, dequantized) come back as is."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randint(0, 16, (32, 64), generator=gen)
    q[:, ::32], q[:, 1::32] = 0, 15
    scale, low = torch.rand(32, 2, generator=gen), torch.randn(32, 2, generator=gen)
    w = q * scale.repeat_interleave(32, 1) + low.repeat_interleave(32, 1)
    qw = quantize_int4(w, 32)
    assert torch.equal(qw.q.long(), q)
    torch.testing.assert_close(qw.dequantize(), w, rtol=1e-6, atol=1e-6)  # float32 rounding only


def test_concat_rows_of_mixed_formats_is_exact():
    gen = torch.Generator().manual_seed(3)
    four = quantize_int4(torch.randn(8, 64, generator=gen), 32)
    eight = QuantizedTensor(torch.randint(-32, 32, (4, 64), generator=gen, dtype=torch.int8),
                            torch.rand(4, 4, generator=gen), None, 8)  # groups of 16, no offset
    fused = concat_rows([four, eight])
    assert fused.bits == 8 and fused.group == 16 and fused.shape == (12, 64)
    torch.testing.assert_close(fused.dequantize(), torch.cat([four.dequantize(), eight.dequantize()]))
