"""bfloat16 products of many rows (dtype bfloat16 on the CPU): each product against float64 over
the same bfloat16-rounded operands, and the engine around them: float32 activations and KV, the C
kernels, and few-row products still on the layer's own weights."""

import pytest
import torch

from tokenmill.model.bf16_products import BATCHED_ROWS, Bf16Product
from tokenmill.model.layers import Linear
from tokenmill.quant.linear import QuantLinear


@pytest.mark.parametrize("prepack", [False, True])
def test_a_product_is_the_float64_product_of_its_bfloat16_operands_rounded_once(prepack):
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(40, 576, generator=gen), torch.randn(1536, 576, generator=gen), torch.randn(1536, generator=gen)
    expected = x.bfloat16().double() @ w.bfloat16().double().T + b.bfloat16().double()
    actual = Bf16Product(w, b, prepack)(x)
    assert actual.dtype == torch.float32
    # The float32 sum, rounded to bfloat16 once: within half a bfloat16 step (2^-9 relative) plus the
    # float32 accumulation's error.
    torch.testing.assert_close(actual.double(), expected, rtol=2**-8, atol=1e-3)
    assert not torch.equal(actual, x @ w.T + b)  # it is not the float32 product


@pytest.mark.parametrize("quantization", [None, "gguf"])
def test_the_engine_multiplies_many_rows_in_bfloat16_and_few_on_its_own_weights(make_llm, quantization):
    llm = make_llm(dtype="bfloat16", quantization=quantization, kv_cache_memory=64 * 2**20)
    runner = llm.engine.runner
    assert runner.paged.kv_cache.dtype == torch.float32 and runner.attention.name == "cpu"
    layer = runner.model.model.layers[0].mlp.gate_up_proj
    assert isinstance(layer, QuantLinear if quantization else Linear) and layer.bf16_product is not None
    if quantization is None:
        assert layer.weight.dtype == torch.bfloat16 and layer.bf16_product.weight.data_ptr() == layer.weight.data_ptr()
    gen = torch.Generator().manual_seed(1)
    many, few = torch.randn(BATCHED_ROWS, 576, generator=gen), torch.randn(BATCHED_ROWS - 1, 576, generator=gen)
    with torch.inference_mode():
        assert torch.equal(layer(many), layer.bf16_product(many))
        layer.bf16_product, product = None, layer.bf16_product
        try:
            own = layer(few)
        finally:
            layer.bf16_product = product
        assert torch.equal(layer(few), own)
    if quantization is None:  # few rows: the bfloat16 weight widened exactly, the sums in float32
        expected = few.double() @ layer.weight.double().T
        torch.testing.assert_close(own.double(), expected, rtol=1e-5, atol=1e-5)

