"""LoRA's C kernel (csrc/lora.c) against the layer's PyTorch path and against each token's delta
computed on its own from the adapter's unfused matrices, at the default model's layer shapes."""

import pytest
import torch
from torch import nn

from tokenmill.kernels.lora import LoRAKernel
from tokenmill.lora.adapter import LayerDelta
from tokenmill.lora.layers import STATIC_ROWS, LoRALinear, LoRAStep

KERNEL = LoRAKernel.load()
pytestmark = pytest.mark.skipif(KERNEL is None, reason="no C compiler for the LoRA kernel")

SLOTS, MAX_RANK = 4, 16


def fused_base(output_sizes: list[int], in_features: int) -> nn.Linear:
    base = nn.Linear(in_features, sum(output_sizes), bias=False)
    if len(output_sizes) > 1:
        base.shard_ids, base.output_sizes = list(range(len(output_sizes))), output_sizes
    return base


def random_delta(gen: torch.Generator, output_sizes: list[int], in_features: int, rank: int) -> LayerDelta:
    """A fused delta as adapter.py builds it: shards' A stacked, B block-placed."""
    shards = len(output_sizes)
    a = torch.randn(shards * rank, in_features, generator=gen) * 0.1
    b = torch.zeros(sum(output_sizes), shards * rank)
    first = 0
    for i, rows in enumerate(output_sizes):
        b[first : first + rows, i * rank : (i + 1) * rank] = torch.randn(rows, rank, generator=gen) * 0.1
        first += rows
    return LayerDelta(a, b)


@pytest.mark.parametrize("output_sizes,in_features", [([576, 192, 192], 576), ([576], 576), ([1536, 1536], 576),
                                                      ([576], 1536)])
@pytest.mark.parametrize("num_tokens", [1, 5, 37, STATIC_ROWS + 40])
def test_kernel_equals_the_pytorch_path_and_each_token_alone(output_sizes, in_features, num_tokens):
    gen = torch.Generator().manual_seed(num_tokens + len(output_sizes))
    step = LoRAStep(torch.device("cpu"))
    kinds = {"kernel": KERNEL, "pytorch": None}
    layers = {kind: LoRALinear(fused_base(output_sizes, in_features), SLOTS, MAX_RANK, step, kernel,
                               torch.device("cpu"), torch.float32) for kind, kernel in kinds.items()}  # fmt: skip
    layers["pytorch"].base = layers["kernel"].base
    ranks = [MAX_RANK, 8, 4]  # slot 3 stays empty; slot 1 and 2 below max_rank (zero-padded)
    deltas = [random_delta(gen, output_sizes, in_features, rank) for rank in ranks]
    for layer in layers.values():
        for slot, (delta, rank) in enumerate(zip(deltas, ranks)):
            layer.set_slot(slot, delta, rank)
    slots = torch.randint(-1, 3, (num_tokens,), generator=gen).tolist()
    step.set(slots)
    wide = torch.randn(num_tokens, in_features + 64, generator=gen)
    x = wide[:, 32 : 32 + in_features]  # rows apart by more than their length
    got, reference = layers["kernel"](x), layers["pytorch"](x)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    base = x @ layers["kernel"].base.weight.T
    for t, slot in enumerate(slots):
        expected = base[t] if slot < 0 else base[t] + (x[t] @ deltas[slot].a.T) @ deltas[slot].b.T
        torch.testing.assert_close(got[t], expected, rtol=1e-5, atol=1e-5)


def test_a_step_without_adapters_leaves_the_base_product():
    step = LoRAStep(torch.device("cpu"))
    layer = LoRALinear(fused_base([576], 576), SLOTS, MAX_RANK, step, KERNEL, torch.device("cpu"), torch.float32)
    layer.set_slot(0, random_delta(torch.Generator().manual_seed(0), [576], 576, MAX_RANK), MAX_RANK)
    x = torch.randn(3, 576)
    step.set([-1, -1, -1])
    torch.testing.assert_close(layer(x), layer.base(x))
    step.set(None)
    torch.testing.assert_close(layer(x), layer.base(x))
