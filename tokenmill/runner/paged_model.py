"""A model bound to its paged KV pool and to the attention backend that reads that pool.

The model runner executes one; a separate draft model (speculative/proposers.py) is another,
built the same way with as many blocks as the model's pool, so that the sequences' block tables
address both."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from tokenmill.attention.base import AttentionBackend, kv_block_views
from tokenmill.attention.selector import select_attention_backend
from tokenmill.config import ModelConfig
from tokenmill.kernels.fused_ops import FusedOps
from tokenmill.kv.layout import KVLayout
from tokenmill.model.arch_config import ArchConfig
from tokenmill.model.layers import bind_fused_ops
from tokenmill.model.loader import LoadedModel
from tokenmill.runner.kv_cache import allocate_kv_cache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PagedModel:
    model: nn.Module
    arch: ArchConfig
    kv_cache: torch.Tensor  # [slots, 2, num_blocks + 1, block elements]: a slot per layer, or per group's layer
    kv_scales: torch.Tensor | None  # int8 pools: [slots, 2, num_blocks + 1, KVH * block_size]
    attention: AttentionBackend
    block_size: int

    @property
    def num_blocks(self) -> int:
        """The blocks sequences can own (the KV manager's), without the scratch block."""
        return self.kv_cache.shape[2] - 1

    @property
    def scratch_block(self) -> int:
        """One block past the others that no sequence owns: the padding rows of a captured CUDA
        step (runner/cuda_graphs.py) write their K and V there."""
        return self.num_blocks

    @classmethod
    def build(cls, loaded: LoadedModel, config: ModelConfig, num_blocks: int, block_size: int,
              kv_dtype: torch.dtype, layout: KVLayout | None = None) -> PagedModel:  # fmt: skip
        """Allocates the pool, gives each attention layer its views of it (its group's slot, with
        several KV groups), and binds the attention backend (and with the C one, the fused C
        elementwise kernels) to the model."""
        layout = layout or KVLayout.single(loaded.arch.num_layers)
        kv_cache, kv_scales = allocate_kv_cache(loaded.arch, num_blocks + 1, block_size, kv_dtype, config.device,
                                                layout.num_slots)  # fmt: skip
        for layer, attn in enumerate(loaded.model.attention_layers()):
            slot, group = layout.layer_slot[layer], layout.layer_group[layer]
            scales = None if kv_scales is None else kv_scales[slot]
            attn.kv = kv_block_views(kv_cache[slot], scales, block_size, attn.num_kv_heads, attn.head_dim, group)
        attention = select_attention_backend(config.attention_backend, config.device, config.activation_dtype,
                                             loaded.arch.num_queries_per_kv, loaded.arch.head_dim, block_size,
                                             sliding_window=loaded.arch.layer_types is not None)
        if attention.name == "cpu":  # the C elementwise kernels go with the C attention kernel: float32
            ops = FusedOps.load()
            if ops is not None:
                logger.info("fused C kernels bound to %d layers", bind_fused_ops(loaded.model, ops))
        return cls(loaded.model, loaded.arch, kv_cache, kv_scales, attention, block_size)
