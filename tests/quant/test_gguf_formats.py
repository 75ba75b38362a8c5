"""GGUF block formats read as integers and scales, against the gguf package's dequantization."""

import gguf
import numpy as np
import pytest
import torch

from tokenmill.model.gguf_file import read_gguf
from tokenmill.quant.gguf_formats import Q4_0, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0, read_quantized
from tokenmill.quant.tensor import QuantizedTensor

# Bytes per block, and where the float16 scales (and minimums) sit in it.
BLOCKS = {Q8_0: (32, 34, [0]), Q4_0: (32, 18, [0]), Q4_1: (32, 20, [0, 2]), Q5_0: (32, 22, [0]),
          Q4_K: (256, 144, [0, 2]), Q6_K: (256, 210, [208])}


@pytest.mark.parametrize("tensor_type", list(BLOCKS), ids=lambda t: gguf.GGMLQuantizationType(t).name)
def test_random_blocks_read_exactly(tensor_type):
    per_block, block_bytes, halves = BLOCKS[tensor_type]
    rng = np.random.default_rng(tensor_type)
    rows, cols = 6, 1024
    blocks = rng.integers(0, 256, size=(rows, cols // per_block, block_bytes), dtype=np.uint8)
    for at in halves:  # finite float16 scales; every other byte is any bit pattern
        blocks[..., at : at + 2] = rng.uniform(-2, 2, (rows, cols // per_block, 1)).astype(np.float16).view(np.uint8)
    raw = blocks.reshape(rows, -1)
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(tensor_type)).reshape(rows, cols)
    actual = read_quantized(raw, tensor_type, rows, cols)
    assert actual.bits == (8 if tensor_type in (Q8_0, Q6_K, Q5_0) else 4)
    assert actual.q.min() >= (-128 if actual.bits == 8 else 0) and actual.q.max() <= (127 if actual.bits == 8 else 15)
    np.testing.assert_array_equal(actual.dequantize().numpy(), expected)


def test_the_default_models_own_tensors(gguf_path):
    """Its Q8_0 embedding and a layer's Q4_1 matrices, kept quantized, equal the float32 reading."""
    wanted = {"token_embd.weight", "blk.3.attn_q.weight", "blk.3.ffn_down.weight"}
    floats = {n: t for n, t in read_gguf(gguf_path).tensors() if n in wanted}
    kept = {n: t for n, t in read_gguf(gguf_path).tensors(keep_quantized=True) if n in wanted}
    assert [kept[n].bits for n in sorted(wanted)] == [4, 4, 8]
    for name in wanted:
        assert isinstance(kept[name], QuantizedTensor)
        torch.testing.assert_close(kept[name].dequantize(), floats[name], rtol=0, atol=0)
