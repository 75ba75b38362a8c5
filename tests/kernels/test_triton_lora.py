"""LoRA's Triton kernels against the layer's PyTorch path: fused and plain layers, rows with
adapters of several ranks and rows without. Without a GPU they run under Triton's interpreter
(small shapes)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is imported

triton = pytest.importorskip("triton")

from tests.kernels.test_lora_kernel import fused_base, random_delta  # noqa: E402
from tokenmill.kernels.triton_lora import TritonLoRAKernel  # noqa: E402
from tokenmill.lora.layers import LoRALinear, LoRAStep  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("output_sizes,in_features", [([96, 32, 32], 64), ([128, 128], 64), ([64], 160)])
@pytest.mark.parametrize("num_tokens", [1, 7])
def test_triton_kernel_equals_the_pytorch_path(output_sizes, in_features, num_tokens):
    gen = torch.Generator().manual_seed(num_tokens)
    step = LoRAStep(DEVICE)
    layers = {kind: LoRALinear(fused_base(output_sizes, in_features), 3, 8, step, kernel, DEVICE, torch.float32)
              for kind, kernel in {"triton": TritonLoRAKernel(), "pytorch": None}.items()}  # fmt: skip
    layers["pytorch"].base = layers["triton"].base.to(DEVICE)
    for slot, rank in enumerate([8, 4]):  # slot 2 stays empty
        delta = random_delta(gen, output_sizes, in_features, rank)
        for layer in layers.values():
            layer.set_slot(slot, delta, rank)
    step.set(torch.randint(-1, 2, (num_tokens,), generator=gen).tolist())
    x = torch.randn(num_tokens, in_features, generator=gen).to(DEVICE)
    torch.testing.assert_close(layers["triton"](x), layers["pytorch"](x), rtol=1e-5, atol=1e-5)
