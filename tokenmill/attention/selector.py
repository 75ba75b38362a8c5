"""Choosing the attention backend for a device and dtype: the model runner asks once."""

from __future__ import annotations

import torch

from tokenmill.attention.base import AttentionBackend
from tokenmill.attention.cpu_backend import CpuAttentionBackend
from tokenmill.attention.torch_backend import TorchAttentionBackend
from tokenmill.kernels.paged_attention import PagedAttentionKernels


def select_attention_backend(
    name: str, device: torch.device, dtype: torch.dtype, num_queries_per_kv: int
) -> AttentionBackend:
    """`auto` takes the C kernel for float32 on the CPU where it compiles, else the torch path."""
    if name == "torch":
        return TorchAttentionBackend(num_queries_per_kv)
    supported = device.type == "cpu" and dtype == torch.float32
    if name == "cpu" and not supported:
        raise ValueError(f"the cpu attention backend runs float32 on the CPU, not {dtype} on {device}")
    kernels = PagedAttentionKernels.load() if supported else None
    if kernels is not None:
        return CpuAttentionBackend(kernels)
    if name == "cpu":
        raise RuntimeError("the cpu attention kernel could not be compiled (is a C compiler installed?)")
    return TorchAttentionBackend(num_queries_per_kv)
