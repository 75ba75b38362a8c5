"""KVCacheManager: every sequence's block table, and all of prefix caching, behind one interface.

The scheduler asks it for room (allocate, trim, free), for the cached prefix of a new sequence
(computed_blocks) and to name what a step filled (cache_full_blocks); it never sees a hash. Pure
Python over ids: the block pool (BlockManager) counts references, the prefix cache maps block
hashes (kv/block_hash.py) to blocks. The pool has room for one more block, the null block: a table
may have holes (`null_block`), so that blocks behind a sliding window can go back to the pool while
the positions after them stay.
Each table remembers the first entry changed since the runner last heard of it (take_changes),
so a step sends only what is new.

With several groups of layers (kv/layout.py: each its own span), a sequence's table interleaves
them: entry i * num_groups + g is block i of group g, so everything that moves tables (the
scheduler's diffs, the runner's copy) handles one flat list whatever the model. A windowed
group's entries behind its window are holes: `free_behind` gives them back as the sequence goes
on, and `allocate` never fills them (a long prompt's chunks take blocks only within reach).
With attention sinks, a windowed group also keeps the blocks of the first `sink_tokens` tokens.
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
    table: list[int] = field(default_factory=list)  # num_groups entries per block of tokens
    num_cached: int = 0  # the first blocks of tokens that the prefix cache names
    changed_from: int = 0  # the first entry of table the runner has not seen
    freed_until: int = 0  # the windowed groups' blocks before this one are holes


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 group_windows: tuple[int | None, ...] = (None,), sink_tokens: int = 0) -> None:  # fmt: skip
        """group_windows: each group's span in tokens, None for the whole context. sink_tokens: the
        first tokens every windowed group keeps (attention sinks)."""
        self.pool = BlockManager(num_blocks, PrefixCache() if enable_prefix_caching else None)
        self.block_size = block_size
        self.group_windows = group_windows
        self.num_groups = len(group_windows)
        self.sink_blocks = -(-sink_tokens // block_size)
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

    def sequence_capacity(self, chunk: int) -> int | None:
        """The most tokens one sequence can hold with the whole pool to itself, prefilled chunk
        tokens a step: the whole-context groups grow with it, each windowed group holds at most
        its window and a chunk. None: no bound (every group is windowed). Raises where the pool
        cannot hold one sequence's windows (and a block of each other group)."""
        whole = sum(window is None for window in self.group_windows)
        windowed = sum(-(-(window + chunk - 1) // self.block_size) + 1 + self.sink_blocks
                       for window in self.group_windows if window)  # fmt: skip
        if self.num_blocks < windowed + whole:
            raise ValueError(f"the KV cache's {self.num_blocks} blocks cannot hold one sequence: its windows and "
                             f"a prefill chunk take {windowed + whole}; give the KV cache more memory")
        return None if whole == 0 else (self.num_blocks - windowed) // whole * self.block_size

    # ---- one sequence's table ---------------------------------------------------------------

    def block_table(self, seq_id: int) -> list[int]:
        blocks = self._blocks.get(seq_id)
        return [] if blocks is None else blocks.table

    def can_allocate(self, seq_id: int, num_tokens: int, num_computed: int = 0) -> bool:
        """Whether the pool has the blocks for num_tokens tokens, of which num_computed are done
        (free_behind first: the windowed groups need only the blocks within reach)."""
        return len(self._new_entries(self.block_table(seq_id), num_tokens, num_computed)) <= self.num_free_blocks

    def allocate(self, seq_id: int, num_tokens: int, num_computed: int = 0) -> None:
        """Grows the table until it holds num_tokens tokens, of which num_computed are done: the
        windowed groups' blocks out of reach of the tokens to compute stay holes. Raises when the
        pool is short."""
        blocks = self._entry(seq_id)
        entries = self._new_entries(blocks.table, num_tokens, num_computed)
        taken = iter(self.pool.take(len(entries)))
        blocks.table += [next(taken) if real else self.null_block for real in entries]

    def _new_entries(self, table: list[int], num_tokens: int, num_computed: int) -> list[bool]:
        """The entries growing table to num_tokens adds: True for a block, False for a hole."""
        have, need = len(table) // self.num_groups, -(-num_tokens // self.block_size)
        reach = [self._first_in_reach(w, num_computed) for w in self.group_windows]
        return [i >= first or i < self.sink_blocks for i in range(have, need) for first in reach]

    def _first_in_reach(self, window: int | None, num_computed: int) -> int:
        """The first block a group's next query (at position num_computed) reads."""
        return 0 if window is None else max(0, num_computed - window + 1) // self.block_size

    def _blocks_read(self, window: int, num_blocks: int) -> list[int]:
        """The blocks a windowed group's query after num_blocks full blocks reads: the sinks', and
        those within its window."""
        first = max(self.sink_blocks, self._first_in_reach(window, num_blocks * self.block_size))
        return list(range(min(self.sink_blocks, num_blocks))) + list(range(first, num_blocks))

    def free_behind(self, seq_id: int, num_computed: int) -> None:
        """Gives back the windowed groups' blocks that no query from position num_computed on reads."""
        blocks = self._blocks.get(seq_id)
        num_logical = 0 if blocks is None else len(blocks.table) // self.num_groups
        reach = {g: min(num_logical, self._first_in_reach(w, num_computed))
                 for g, w in enumerate(self.group_windows) if w is not None}  # fmt: skip
        if blocks is None or not reach:
            return
        start = max(blocks.freed_until, self.sink_blocks)
        for i in range(start, max(reach.values())):  # idempotent: groups of longer windows lag
            for g, first in reach.items():
                if i < first:
                    self._free_entry(blocks, i * self.num_groups + g)
        blocks.freed_until = max(blocks.freed_until, min(reach.values()))

    def _free_entry(self, blocks: _Blocks, index: int) -> None:
        if blocks.table[index] != self.null_block:
            self.pool.free([blocks.table[index]])
            blocks.table[index] = self.null_block
            blocks.changed_from = min(blocks.changed_from, index)

    def trim(self, seq_id: int, num_tokens: int) -> None:
        """Gives back the blocks past those holding num_tokens tokens (rejected proposals' KV)."""
        blocks = self._blocks[seq_id]
        keep = -(-num_tokens // self.block_size)
        self.pool.free(blocks.table[keep * self.num_groups :])
        del blocks.table[keep * self.num_groups :]
        blocks.changed_from = min(blocks.changed_from, len(blocks.table))
        blocks.num_cached = min(blocks.num_cached, keep)

    def free(self, seq_id: int, keep_hashes: bool = False) -> None:
        """Gives back the whole table, tail first. keep_hashes: the sequence comes back (preempted,
        or not admitted after all), and its blocks' names need not be computed again."""
        blocks = self._blocks.pop(seq_id, None)
        if blocks is not None:
            self.pool.free(blocks.table)
        if not keep_hashes:
            self._hashes.pop(seq_id, None)

    def fork(self, source_id: int, seq_id: int, num_blocks: int) -> bool:
        """seq_id's table starts as source_id's first num_blocks (n > 1 samples share their prompt);
        the source named them in the prefix cache already. False (and nothing shared) where the
        source has already freed a windowed block that seq_id's next query would read."""
        source = self._blocks[source_id]
        shared = source.table[: num_blocks * self.num_groups]
        for g, window in enumerate(self.group_windows):
            if window is not None and any(shared[i * self.num_groups + g] == self.null_block
                                          for i in self._blocks_read(window, num_blocks)):  # fmt: skip
                return False
        self._blocks[seq_id] = _Blocks(self.pool.share(shared), num_cached=num_blocks)
        return True

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
        found = [cache.lookup([self._key(h, g) for h in hashes[:num_blocks]]) if w is None else None
                 for g, w in enumerate(self.group_windows)]  # fmt: skip
        num_hit = self._window_hit(hashes, min([len(f) for f in found if f is not None], default=num_blocks))
        read = {window: set(self._blocks_read(window, num_hit)) for window in self.group_windows if window}
        table = []
        for i in range(num_hit):
            for g, window in enumerate(self.group_windows):
                if window is None:
                    table.append(found[g][i])
                elif i in read[window]:
                    table += cache.lookup([self._key(hashes[i], g)])
                else:
                    table.append(self.null_block)
        blocks.table = self.pool.share(table)
        blocks.num_cached = num_hit
        return num_hit * self.block_size

    def _window_hit(self, hashes: list[BlockHash], num_blocks: int) -> int:
        """The longest prefix of at most num_blocks blocks whose next query finds, in every windowed
        group, all the blocks it reads cached. One pass per group: the run of cached blocks ending
        at each block tells at once whether a window's blocks are all there."""
        cache = self.prefix_cache
        runs: dict[int, list[int]] = {}  # group -> at each block, the cached blocks in a row ending there
        for g, window in enumerate(self.group_windows):
            if window is not None:
                run, runs[g] = 0, []
                for h in hashes[:num_blocks]:
                    run = run + 1 if self._key(h, g) in cache else 0
                    runs[g].append(run)

        def readable(n: int) -> bool:
            for g, run in runs.items():
                first = max(self.sink_blocks, self._first_in_reach(self.group_windows[g], n * self.block_size))
                sinks = min(self.sink_blocks, n)
                if (sinks and run[sinks - 1] < sinks) or (first < n and run[n - 1] < n - first):
                    return False
            return True

        while num_blocks > 0 and not readable(num_blocks):
            num_blocks -= 1  # a windowed group lacks a block the next query reads: a shorter prefix
        return num_blocks

    def _key(self, block_hash: BlockHash, group: int) -> BlockHash:
        """A block's name in the prefix cache: its hash, and which group's layers it holds."""
        return block_hash if group == 0 else block_hash + group.to_bytes(2, "little")

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
            for g in range(self.num_groups):
                block_id = blocks.table[i * self.num_groups + g]
                if block_id != self.null_block:
                    cache.insert(block_id, self._key(hashes[i], g))
        blocks.num_cached = num_full

    def record_query(self, num_tokens: int, num_hits: int) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.record_query(num_tokens, num_hits)

    def reset_counts(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.num_queried_tokens = self.prefix_cache.num_hit_tokens = 0

    def free_block_ids(self) -> list[int]:
        return self.pool.free_block_ids()
