"""The KV block pool's bookkeeping: a free queue and reference counts, pure Python over ids.

A sequence owns a block table (a list of block ids, kv/kv_manager.py); blocks are taken only as
tokens arrive, never reserved for a sequence's maximum length.

With a prefix cache, a block no one references keeps its content (and its name in the cache)
while it waits in the free queue; a request that needs that content takes it back out. New
blocks come from the front of the queue, the least recently freed, and that is when a cached
block's content is evicted. Tables are freed tail first, so a prefix's leaves go before their
parents.

One more id, `null_block` (num_blocks), is never handed out or freed: it stands in a table for a
block given back from its middle (a hole, behind a sliding window), so the positions after it keep
their places. A KV pool whose tables may have holes holds num_blocks + 1 blocks for it.
"""

from __future__ import annotations

from collections import OrderedDict

from tokenmill.kv.prefix_cache import PrefixCache


class BlockManager:
    def __init__(self, num_blocks: int, prefix_cache: PrefixCache | None = None) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.prefix_cache = prefix_cache
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # front: reused first

    @property
    def null_block(self) -> int:
        return self.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def take(self, count: int) -> list[int]:
        """count blocks from the free queue's front, each referenced once."""
        if count > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {count}, {self.num_free_blocks} free")
        taken = []
        for _ in range(count):
            block_id, _ = self._free.popitem(last=False)
            if self.prefix_cache is not None:
                self.prefix_cache.evict(block_id)
            self.ref_counts[block_id] = 1
            taken.append(block_id)
        return taken

    def share(self, block_ids: list[int]) -> list[int]:
        """A new table referencing the same blocks: a forked sequence's prefix, or cached blocks
        (which may sit in the free queue, unreferenced, until taken)."""
        for block_id in block_ids:
            if block_id == self.null_block:
                continue
            if self.ref_counts[block_id] == 0:
                del self._free[block_id]
            self.ref_counts[block_id] += 1
        return list(block_ids)

    def free(self, block_table: list[int]) -> None:
        """Drops the table's references, tail first; blocks no one references join the free queue."""
        for block_id in reversed(block_table):
            if block_id == self.null_block:
                continue
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self._free[block_id] = None
        block_table.clear()

    def free_block_ids(self) -> list[int]:
        """The free queue, front (reused first) to back."""
        return list(self._free)
