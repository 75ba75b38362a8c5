"""Choosing the attention backend for a device and dtype: the model runner asks once."""

from __future__ import annotations

import importlib.util

import torch

from tokenmill.attention.base import AttentionBackend
from tokenmill.attention.cpu_backend import CpuAttentionBackend
from tokenmill.attention.torch_backend import TorchAttentionBackend
from tokenmill.kernels.paged_attention import PagedAttentionKernels


def select_attention_backend(
    name: str, device: torch.device, dtype: torch.dtype, num_queries_per_kv: int, head_dim: int, block_size: int,
    sliding_window: bool = False,
) -> AttentionBackend:
    """`auto` takes the C kernel for float32 on the CPU where it compiles, the Triton kernel on
    CUDA where Triton is installed and the shape suits it, else the torch path. A model with
    sliding-window layers takes the torch path: the kernels attend to whole contexts."""
    if name == "torch" or (name == "auto" and sliding_window):
        return TorchAttentionBackend(num_queries_per_kv)
    if sliding_window:
        raise ValueError(f"the {name} attention backend has no sliding window yet; this model needs --attention-backend torch")
    if name == "triton" or (name == "auto" and device.type == "cuda"):
        return _triton(name, device, head_dim, block_size) or TorchAttentionBackend(num_queries_per_kv)
    supported = device.type == "cpu" and dtype == torch.float32
    if name == "cpu" and not supported:
        raise ValueError(f"the cpu attention backend runs float32 on the CPU, not {dtype} on {device}")
    kernels = PagedAttentionKernels.load() if supported else None
    if kernels is not None:
        return CpuAttentionBackend(kernels)
    if name == "cpu":
        raise RuntimeError("the cpu attention kernel could not be compiled (is a C compiler installed?)")
    return TorchAttentionBackend(num_queries_per_kv)


def _triton(name: str, device: torch.device, head_dim: int, block_size: int) -> AttentionBackend | None:
    """The Triton backend; None where `auto` should fall back (asked by name, an error instead)."""
    if importlib.util.find_spec("triton") is None:
        if name == "triton":
            raise RuntimeError("the triton attention backend needs the triton package")
        return None
    from tokenmill.attention.triton_backend import TritonAttentionBackend
    from tokenmill.kernels.triton_attention import check_shape, interpreting

    if device.type != "cuda" and not interpreting():
        raise ValueError(f"the triton attention backend runs on CUDA (or under TRITON_INTERPRET=1), not {device}")
    try:
        check_shape(head_dim, block_size)
    except ValueError:
        if name == "triton":
            raise
        return None
    return TritonAttentionBackend()
