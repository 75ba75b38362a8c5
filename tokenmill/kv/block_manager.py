"""The KV block pool's bookkeeping: a free list and reference counts, pure Python over ids.

A sequence owns a block table (a list of block ids); its token i lives in block
table[i // block_size] at offset i % block_size. Blocks are taken only as tokens arrive,
never reserved for a sequence's maximum length.
"""

from __future__ import annotations

from collections import deque


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def num_blocks_needed(self, block_table: list[int], num_tokens: int) -> int:
        """How many more blocks a table needs to hold num_tokens tokens."""
        return max(0, -(-num_tokens // self.block_size) - len(block_table))

    def can_allocate(self, block_table: list[int], num_tokens: int) -> bool:
        return self.num_blocks_needed(block_table, num_tokens) <= self.num_free_blocks

    def allocate(self, block_table: list[int], num_tokens: int) -> None:
        """Grows block_table in place until it holds num_tokens tokens."""
        needed = self.num_blocks_needed(block_table, num_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {needed}, {self.num_free_blocks} free")
        for _ in range(needed):
            block_id = self._free.popleft()
            self.ref_counts[block_id] = 1
            block_table.append(block_id)

    def share(self, block_ids: list[int]) -> list[int]:
        """A new table referencing the same blocks (a forked sequence's common prefix)."""
        for block_id in block_ids:
            self.ref_counts[block_id] += 1
        return list(block_ids)

    def free(self, block_table: list[int]) -> None:
        """Drops the table's references; blocks no one references go back to the free list."""
        for block_id in reversed(block_table):
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self._free.append(block_id)
        block_table.clear()
