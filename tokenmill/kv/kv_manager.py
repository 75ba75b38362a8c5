"""KVCacheManager: every sequence's block table, and all of prefix caching, behind one interface.

The scheduler asks it for room (allocate, trim, free), for the cached prefix of a new sequence
(computed_blocks) and to name what a step filled (cache_full_blocks); it never sees a hash. Pure
Python over ids: the block pool (BlockManager) counts references, the prefix cache maps block
hashes (kv/block_hash.py) to blocks. Where the pool has room for the null block (allow_holes), a
table may have holes (`null_block`, from free_blocks), so that blocks behind a sliding window can go
back to the pool while the positions after them stay.
Each table remembers the first entry changed since the runner last heard of it (take_changes),
so a step sends only what is new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tokenmill.kv.block_hash import BlockHash, ExtraKeys, chain_hashes
from tokenmill.kv.block_manager import BlockManager
from tokenmill.kv.prefix_cache import PrefixCache


class KVRequest(Protocol):
    """What the manager reads of a sequence: its id, its tokens and the keys its blocks are named by."""

    seq_id: int
    token_ids: list[int]

    @property
    def extra_keys(self) -> ExtraKeys: ...


@dataclass
class _Blocks:
    table: list[int] = field(default_factory=list)
    num_cached: int = 0  # the table's first blocks that the prefix cache names
    changed_from: int = 0  # the first entry of table the runner has not seen


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 allow_holes: bool = False) -> None:
        """allow_holes: the KV pool has one block more than num_blocks, the null block."""
        self.pool = BlockManager(num_blocks, block_size, PrefixCache() if enable_prefix_caching else None)
        self.block_size = block_size
        self.allow_holes = allow_holes
        self._blocks: dict[int, _Blocks] = {}
        # The hash chain of each sequence's full blocks: its tokens' alone, so it outlives the
        # sequence's blocks (a preemption, a failed admission) until the sequence ends.
        self._hashes: dict[int, list[BlockHash]] = {}

    # ---- the pool -----------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def null_block(self) -> int:
        return self.pool.null_block

    @property
    def usage(self) -> float:
        return self.pool.usage

    @property
    def ref_counts(self) -> list[int]:
        return self.pool.ref_counts

    @property
    def prefix_cache(self) -> PrefixCache | None:
        return self.pool.prefix_cache

    # ---- one sequence's table ---------------------------------------------------------------

    def block_table(self, seq_id: int) -> list[int]:
        blocks = self._blocks.get(seq_id)
        return [] if blocks is None else blocks.table

    def can_allocate(self, seq_id: int, num_tokens: int) -> bool:
        return self.pool.can_allocate(self.block_table(seq_id), num_tokens)

    def allocate(self, seq_id: int, num_tokens: int) -> None:
        """Grows the table until it holds num_tokens tokens (raises when the pool is short)."""
        blocks = self._entry(seq_id)
        self.pool.allocate(blocks.table, num_tokens)

    def trim(self, seq_id: int, num_tokens: int) -> None:
        """Gives back the blocks past those holding num_tokens tokens (rejected proposals' KV)."""
        blocks = self._blocks[seq_id]
        self.pool.trim(blocks.table, num_tokens)
        blocks.changed_from = min(blocks.changed_from, len(blocks.table))
        blocks.num_cached = min(blocks.num_cached, len(blocks.table))

    def free_blocks(self, seq_id: int, start: int, end: int) -> None:
        """Gives back table[start:end], leaving holes: the positions after them keep their blocks."""
        if not self.allow_holes:
            raise ValueError("this KV pool has no null block to fill holes with (allow_holes)")
        blocks = self._blocks[seq_id]
        self.pool.free(blocks.table[start:end])
        blocks.table[start:end] = [self.null_block] * (end - start)
        blocks.changed_from = min(blocks.changed_from, start)

    def free(self, seq_id: int, keep_hashes: bool = False) -> None:
        """Gives back the whole table, tail first. keep_hashes: the sequence comes back (preempted,
        or not admitted after all), and its blocks' names need not be computed again."""
        blocks = self._blocks.pop(seq_id, None)
        if blocks is not None:
            self.pool.free(blocks.table)
        if not keep_hashes:
            self._hashes.pop(seq_id, None)

    def fork(self, source_id: int, seq_id: int, num_blocks: int) -> None:
        """seq_id's table starts as source_id's first num_blocks (n > 1 samples share their prompt);
        the source named them in the prefix cache already."""
        source = self._blocks[source_id]
        self._blocks[seq_id] = _Blocks(self.pool.share(source.table[:num_blocks]), num_cached=num_blocks)

    def take_changes(self, seq_id: int) -> tuple[int, list[int]]:
        """(start, table[start:]): what changed since the last call, for the runner's copy."""
        blocks = self._blocks[seq_id]
        start, blocks.changed_from = blocks.changed_from, len(blocks.table)
        return start, blocks.table[start:]

    def _entry(self, seq_id: int) -> _Blocks:
        return self._blocks.setdefault(seq_id, _Blocks())

    # ---- prefix caching ---------------------------------------------------------------------

    def computed_blocks(self, seq: KVRequest) -> int:
        """Takes the cached blocks of seq's longest cached prefix into its (empty) table, always
        leaving one token to compute (its logits are needed); returns the tokens they hold."""
        cache = self.prefix_cache
        if cache is None or self.block_table(seq.seq_id):
            return 0
        blocks = self._entry(seq.seq_id)
        num_blocks = (len(seq.token_ids) - 1) // self.block_size  # full blocks, short of the last token
        hashes = self._hashes.setdefault(seq.seq_id, [])
        chain_hashes(seq.token_ids, self.block_size, num_blocks, hashes, seq.extra_keys)
        blocks.table = self.pool.share(cache.lookup(hashes[:num_blocks]))
        blocks.num_cached = len(blocks.table)
        return len(blocks.table) * self.block_size

    def cache_full_blocks(self, seq: KVRequest, num_computed_tokens: int) -> None:
        """Names in the prefix cache every full block of seq whose tokens are all computed."""
        cache = self.prefix_cache
        blocks = self._blocks.get(seq.seq_id)
        if cache is None or blocks is None:
            return
        # Accepted proposals are computed but join token_ids only later: name those blocks then.
        num_full = min(num_computed_tokens, len(seq.token_ids)) // self.block_size
        if num_full <= blocks.num_cached:
            return
        hashes = self._hashes.setdefault(seq.seq_id, [])
        chain_hashes(seq.token_ids, self.block_size, num_full, hashes, seq.extra_keys)
        for i in range(blocks.num_cached, num_full):
            if blocks.table[i] != self.null_block:
                cache.insert(blocks.table[i], hashes[i])
        blocks.num_cached = num_full

    def record_query(self, num_tokens: int, num_hits: int) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.record_query(num_tokens, num_hits)

    def reset_counts(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.num_queried_tokens = self.prefix_cache.num_hit_tokens = 0

    def free_block_ids(self) -> list[int]:
        return self.pool.free_block_ids()
