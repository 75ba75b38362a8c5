"""Paged attention's interface: keys and values live in a block pool and are read through block tables.

The model sees one small interface. Each step, the runner describes its tokens in an
`AttentionBatch` (flat, for every sequence at once) and asks the chosen backend for an
`AttentionPlan`, which every layer then uses to attend its queries in one batched call.
Backends: `torch` (gather + scaled_dot_product_attention, any device; the reference) and
`cpu` (a C kernel that reads blocks in place; tokenmill/kernels). With kv_cache_dtype "int8"
the pool holds one byte per element plus a scale per token and head: `KVCacheView.write`
quantizes each step's new K and V, and both backends dequantize as they read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from tokenmill.quant.tensor import symmetric_int8


@dataclass(frozen=True)
class AttentionBatch:
    """A step's tokens, flat: sequence s owns query rows query_start[s]:query_start[s + 1]."""

    slot_blocks: torch.Tensor  # [T] int64: the block each new token's K and V go to
    slot_offsets: torch.Tensor  # [T] int64: and the offset in that block
    query_start: torch.Tensor  # [S + 1] int32
    seq_lens: torch.Tensor  # [S] int32: keys each sequence has once this step's tokens are written
    block_tables: torch.Tensor  # [S, max_blocks] int32, padded with block 0
    num_decode: int  # the first num_decode sequences have exactly one query (decode rows)
    block_size: int
    # The tables hold only the blocks within this many tokens of the queries (a windowed KV group,
    # kv/layout.py), and those of the first `sinks` tokens: the blocks between are holes, and a
    # backend need not read them.
    window: int | None = None
    sinks: int = 0


@dataclass(frozen=True)
class Sinks:
    """StreamingLLM's attention sinks: the first `count` tokens stay visible to every query, which
    meets them placed at most `count + window - 1` positions on (queries rotated to there by RoPE:
    `queries`), so that no distance exceeds what the model was trained on, however long the stream."""

    count: int
    queries: torch.Tensor  # [T, H, D]


class AttentionPlan(Protocol):
    """What a backend precomputed for one step; shared by every layer."""

    batch: AttentionBatch

    def write(self, kv: KVCacheView, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stores the step's new k and v ([T, KVH, D]) in one layer's cache, at the batch's slots."""
        ...

    def attend(self, q: torch.Tensor, kv: KVCacheView, window: int | None = None,
               sinks: Sinks | None = None) -> torch.Tensor:  # fmt: skip
        """q: [T, H, D]; one layer's cache; returns [T, H, D]. With a window, each query sees only
        the last `window` keys up to its own position (a sliding-window layer), and the sinks."""
        ...


class AttentionBackend(Protocol):
    name: str

    def plan(self, batch: AttentionBatch) -> AttentionPlan: ...


@dataclass(frozen=True)
class GroupedPlan:
    """One plan per KV group (each group's block tables differ); a layer's view names its group."""

    plans: list[AttentionPlan]

    @property
    def batch(self) -> AttentionBatch:
        return self.plans[0].batch

    def write(self, kv: KVCacheView, k: torch.Tensor, v: torch.Tensor) -> None:
        self.plans[kv.group].write(kv, k, v)

    def attend(self, q: torch.Tensor, kv: KVCacheView, window: int | None = None,
               sinks: Sinks | None = None) -> torch.Tensor:  # fmt: skip
        return self.plans[kv.group].attend(q, kv, window, sinks)


def plan_step(backend: AttentionBackend, batches: list[AttentionBatch]) -> AttentionPlan:
    """The step's plan: the backend's own for one KV group, a GroupedPlan for several."""
    if len(batches) == 1:
        return backend.plan(batches[0])
    return GroupedPlan([backend.plan(batch) for batch in batches])


@dataclass(frozen=True)
class KVCacheView:
    """One layer's K and V blocks, as the attention backends read them.

    Keys are stored transposed, [num_blocks, KVH, D, block_size], so that a query's scores against
    a whole block are D vector multiply-adds; values are [num_blocks, KVH, block_size, D]. An int8
    cache also holds a float32 scale per token and KV head, [num_blocks, KVH, block_size], for K
    and V apart: x = scale * int8, with scale = max |x| / 127 over the token's head_dim elements.
    """

    keys: torch.Tensor
    values: torch.Tensor
    key_scales: torch.Tensor | None = None
    value_scales: torch.Tensor | None = None
    group: int = 0  # the KV group whose block tables address these blocks (kv/layout.py)

    def write(self, k: torch.Tensor, v: torch.Tensor, blocks: torch.Tensor, offsets: torch.Tensor) -> None:
        """Stores new tokens' k and v ([T, KVH, D]) at (blocks, offsets), quantizing for int8; in
        plain PyTorch, on any device."""
        if self.key_scales is None or self.value_scales is None:
            self.keys[blocks, :, :, offsets] = k
            self.values[blocks, :, offsets, :] = v
            return
        (k8, v8), scales = symmetric_int8(torch.stack((k, v)))
        self.keys[blocks, :, :, offsets] = k8
        self.values[blocks, :, offsets, :] = v8
        self.key_scales[blocks, :, offsets] = scales[0]
        self.value_scales[blocks, :, offsets] = scales[1]


def check_no_window(window: int | None, backend: str) -> None:
    """The kernels attend to whole contexts; the selector gives sliding-window models the torch backend."""
    if window is not None:
        raise NotImplementedError(f"the {backend} attention backend has no sliding window yet")


def kv_block_views(
    layer_pool: torch.Tensor, layer_scales: torch.Tensor | None, block_size: int, num_kv_heads: int, head_dim: int,
    group: int = 0,
) -> KVCacheView:
    """One layer's view of the pool ([2, num_blocks, block elements]) and, for int8, of its scales
    ([2, num_blocks, KVH * block_size]); group: the KV group whose tables address them."""
    num_blocks = layer_pool.shape[1]
    keys = layer_pool[0].view(num_blocks, num_kv_heads, head_dim, block_size)
    values = layer_pool[1].view(num_blocks, num_kv_heads, block_size, head_dim)
    if layer_scales is None:
        return KVCacheView(keys, values, group=group)
    key_scales, value_scales = layer_scales.view(2, num_blocks, num_kv_heads, block_size)
    return KVCacheView(keys, values, key_scales, value_scales, group)
