"""Sizing and allocating the paged KV pool from an explicit memory budget."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from tokenmill.config import CacheConfig
from tokenmill.model.arch_config import ArchConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KVCacheSize:
    num_blocks: int
    block_bytes: int
    budget_bytes: int

    def describe(self, block_size: int) -> str:
        return (
            f"KV cache: {self.num_blocks} blocks x {block_size} tokens = {self.num_blocks * block_size} tokens "
            f"(budget {self.budget_bytes / 2**20:.0f} MiB / {self.block_bytes / 2**10:.0f} KiB per block)"
        )


def block_bytes(arch: ArchConfig, block_size: int, dtype: torch.dtype) -> int:
    """K and V, every layer, one block: 2 * layers * block_size * kv_heads * head_dim * element size."""
    element = torch.empty(0, dtype=dtype).element_size()
    return 2 * arch.num_layers * block_size * arch.num_kv_heads * arch.head_dim * element


def size_kv_cache(arch: ArchConfig, cfg: CacheConfig, dtype: torch.dtype, device: torch.device) -> KVCacheSize:
    budget = cfg.kv_cache_memory or int(available_memory(device) * cfg.kv_cache_memory_fraction)
    per_block = block_bytes(arch, cfg.block_size, dtype)
    size = KVCacheSize(budget // per_block, per_block, budget)
    if size.num_blocks < 1:
        raise ValueError(f"kv_cache_memory of {budget} bytes holds no block ({per_block} bytes each)")
    logger.info(size.describe(cfg.block_size))
    return size


def allocate_kv_cache(
    arch: ArchConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """[layers, 2, num_blocks, block_size * kv_heads * head_dim]: K and V blocks of every layer,
    laid out inside a block as the attention backends read them (model.attention.kv_block_views)."""
    shape = (arch.num_layers, 2, num_blocks, block_size * arch.num_kv_heads * arch.head_dim)
    return torch.zeros(shape, dtype=dtype, device=device)


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024
