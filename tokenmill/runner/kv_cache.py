"""Sizing and allocating the paged KV pool from an explicit memory budget."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from tokenmill.config import CacheConfig
from tokenmill.kv.layout import KVLayout
from tokenmill.model.arch_config import ArchConfig

logger = logging.getLogger(__name__)

SCALE_DTYPE = torch.float32  # an int8 cache's scales, one per token, KV head and K or V


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


def kv_storage_dtype(kv_cache_dtype: str, dtype: torch.dtype) -> torch.dtype:
    """The pool's element type for CacheConfig.kv_cache_dtype: the model's dtype (auto) or int8."""
    return torch.int8 if kv_cache_dtype == "int8" else dtype


def kv_layout(arch: ArchConfig, cfg: CacheConfig) -> KVLayout:
    """The KV groups for the model's layers: one unless some layers have a sliding window and the
    hybrid manager is on (kv/layout.py)."""
    windows = [arch.window(layer) for layer in range(arch.num_layers)]
    return KVLayout.for_windows(windows, hybrid=not cfg.disable_hybrid_kv_cache_manager)


def block_bytes(arch: ArchConfig, block_size: int, kv_dtype: torch.dtype, num_slots: int | None = None) -> int:
    """K and V, one block of num_slots layers (default: every layer): 2 * layers * block_size *
    kv_heads * (head_dim elements, and for int8 one float32 scale)."""
    per_token_head = arch.head_dim * kv_dtype.itemsize + (SCALE_DTYPE.itemsize if kv_dtype == torch.int8 else 0)
    return 2 * (num_slots or arch.num_layers) * block_size * arch.num_kv_heads * per_token_head


def size_kv_cache(arch: ArchConfig, cfg: CacheConfig, kv_dtype: torch.dtype, device: torch.device,
                  num_blocks: int | None = None, num_slots: int | None = None) -> KVCacheSize:  # fmt: skip
    """The pool for the budget, or of num_blocks blocks (as another rank sized it), of blocks that
    hold num_slots layers (default: every layer)."""
    per_block = block_bytes(arch, cfg.block_size, kv_dtype, num_slots)
    if num_blocks is not None:
        return KVCacheSize(num_blocks, per_block, (num_blocks + 1) * per_block)
    budget = cfg.kv_cache_memory or int(available_memory(device) * cfg.kv_cache_memory_fraction)
    size = KVCacheSize(budget // per_block - 1, per_block, budget)  # one more is the scratch block (PagedModel)
    if size.num_blocks < 1:
        raise ValueError(f"kv_cache_memory of {budget} bytes holds no block ({per_block} bytes each)")
    logger.info(size.describe(cfg.block_size))
    return size


def allocate_kv_cache(
    arch: ArchConfig, num_blocks: int, block_size: int, kv_dtype: torch.dtype, device: torch.device,
    num_slots: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The pool, [slots, 2, num_blocks, block_size * kv_heads * head_dim]: K and V blocks of each
    slot (a layer, or with several KV groups one layer of each group; default: every layer), laid
    out inside a block as the attention backends read them (tokenmill.attention.base.kv_block_views);
    for int8, also its scales, [slots, 2, num_blocks, kv_heads * block_size]."""
    shape = (num_slots or arch.num_layers, 2, num_blocks, block_size * arch.num_kv_heads * arch.head_dim)
    pool = torch.zeros(shape, dtype=kv_dtype, device=device)
    if kv_dtype != torch.int8:
        return pool, None
    scales = torch.zeros(shape[:3] + (arch.num_kv_heads * block_size,), dtype=SCALE_DTYPE, device=device)
    return pool, scales


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024
