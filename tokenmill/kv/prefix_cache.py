"""Automatic prefix caching: full KV blocks named by their content and everything before them.

A block's hash chains its parent's hash with its own token ids (vLLM's scheme; kv/block_hash.py),
so equal hashes mean equal token prefixes up to and including the block, at the same positions: the KV is the
same. A chain rather than a radix tree because the block manager already works in whole blocks
and reference counts; a dict from hash to block id gives the longest cached prefix in one lookup
per block, and sharing a block between running requests is just another reference. Every block's
hash also covers the request's extra keys (its cache salt), so clients that ask to keep their
caches apart never share a block.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenmill.kv.block_hash import BlockHash


class PrefixCache:
    """Which block holds which full-block hash. Eviction order is the block manager's free queue."""

    def __init__(self) -> None:
        self._block_of: dict[BlockHash, int] = {}  # hash -> block id
        self._hash_of: dict[int, BlockHash] = {}  # block id -> hash
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0

    def __len__(self) -> int:
        return len(self._block_of)

    def __contains__(self, block_hash: BlockHash) -> bool:
        return block_hash in self._block_of

    def lookup(self, hashes: Sequence[BlockHash]) -> list[int]:
        """The blocks of the longest cached prefix of the chain."""
        blocks = []
        for h in hashes:
            block_id = self._block_of.get(h)
            if block_id is None:
                break
            blocks.append(block_id)
        return blocks

    def insert(self, block_id: int, block_hash: BlockHash) -> None:
        """Names a block by the hash of its (now computed) content; a hash already cached keeps its block."""
        if block_hash not in self._block_of and block_id not in self._hash_of:
            self._block_of[block_hash] = block_id
            self._hash_of[block_id] = block_hash

    def evict(self, block_id: int) -> None:
        """The block is being reused for other content: forget what it held."""
        block_hash = self._hash_of.pop(block_id, None)
        if block_hash is not None:
            del self._block_of[block_hash]

    def is_cached(self, block_id: int) -> bool:
        return block_id in self._hash_of

    def record_query(self, num_tokens: int, num_hits: int) -> None:
        self.num_queried_tokens += num_tokens
        self.num_hit_tokens += num_hits
