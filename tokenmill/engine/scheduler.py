"""Continuous batching at the iteration level, with chunked prefill and recompute preemption.

One rule, as in vLLM v1: each step spends a token budget so that every sequence's computed
tokens catch up with its known tokens. A decode is a sequence one token behind; a prefill is
one many tokens behind and may take several steps (chunks). Running sequences go first, in
priority order; waiting ones are admitted while blocks, seats and budget last. When blocks run
out, the lowest-priority, newest running sequence is preempted: its blocks are freed and it
is recomputed later from its tokens. With a prefix cache, a sequence being admitted first takes
the cached blocks of its longest cached prefix, and every block a step fills is named in the
cache, so that a preempted sequence, a later turn or another request can take it back.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from tokenmill.config import SchedulerConfig
from tokenmill.engine.sequence import Sequence, SequenceStatus
from tokenmill.kv.block_manager import BlockManager
from tokenmill.kv.prefix_cache import PrefixCache, chain_hashes


@dataclass
class SchedulerOutput:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    def add(self, seq: Sequence, num_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_tokens)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting: list[Sequence] = []  # sorted by schedule_key
        self.running: list[Sequence] = []  # sorted by schedule_key
        self.num_preemptions = 0

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.schedule_key)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.config.max_num_batched_tokens)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_tokens = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if num_tokens + len(seq.spec_token_ids) <= budget:  # proposals go whole or not at all
                num_tokens += len(seq.spec_token_ids)
            else:
                seq.spec_token_ids = []
            if not self._make_room(seq, num_tokens, out):
                break  # seq itself was preempted: everything after it already was
            self.block_manager.allocate(seq.block_table, seq.num_computed_tokens + num_tokens)
            out.add(seq, num_tokens)
            budget -= num_tokens
            i += 1
        return budget

    def _make_room(self, seq: Sequence, num_tokens: int, out: SchedulerOutput) -> bool:
        """Preempts from the back of the running list until seq's new tokens fit; False if seq went."""
        while not self.block_manager.can_allocate(seq.block_table, seq.num_computed_tokens + num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        for seq in list(self.waiting):
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                return
            if not self._take_shared_prefix(seq):
                continue  # its prompt's computing sample is not far enough yet
            self._take_cached_prefix(seq)
            num_tokens = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self.block_manager.can_allocate(seq.block_table, seq.num_computed_tokens + num_tokens):
                self._release_prefix(seq)
                return
            self.block_manager.allocate(seq.block_table, seq.num_computed_tokens + num_tokens)
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: s.schedule_key)
            out.add(seq, num_tokens)
            budget -= num_tokens

    def _take_shared_prefix(self, seq: Sequence) -> bool:
        """For sample k > 0 of an n > 1 request: reuse the full prompt blocks of sample 0."""
        source = seq.prefix_source
        if source is None or seq.block_table:
            return True
        if source.is_finished:  # aborted before it computed the prompt: compute it ourselves
            seq.prefix_source = None
            return True
        shared = shared_prefix_len(seq.num_prompt_tokens, self.block_manager.block_size)
        if source.status is not SequenceStatus.RUNNING or source.num_computed_tokens < shared:
            return False
        seq.block_table = self.block_manager.share(source.block_table[: shared // self.block_manager.block_size])
        seq.num_computed_tokens = shared
        seq.num_cached_blocks = len(seq.block_table)  # the source names them in the cache
        return True

    def _take_cached_prefix(self, seq: Sequence) -> None:
        """Reuses the blocks of the longest cached prefix of seq's tokens, always leaving one token
        to compute (its logits are needed)."""
        cache = self.block_manager.prefix_cache
        if cache is None or seq.block_table:
            return
        block_size = self.block_manager.block_size
        num_blocks = (seq.num_tokens - 1) // block_size  # full blocks, short of the last token
        chain_hashes(seq.token_ids, block_size, num_blocks, seq.block_hashes, seq.cache_salt)
        blocks = cache.lookup(seq.block_hashes[:num_blocks])
        seq.block_table = self.block_manager.share(blocks)
        seq.num_cached_blocks = len(blocks)
        seq.num_computed_tokens = len(blocks) * block_size
        if seq.num_cached_tokens is None:  # first admission: what the response reports
            seq.num_cached_tokens = min(seq.num_computed_tokens, seq.num_prompt_tokens)
            cache.record_query(seq.num_prompt_tokens, seq.num_cached_tokens)

    def _release_prefix(self, seq: Sequence) -> None:
        """Gives back blocks taken for seq (shared or cached) when it cannot be admitted after all."""
        if seq.block_table:
            self.block_manager.free(seq.block_table)
            seq.num_computed_tokens = seq.num_cached_blocks = 0

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        seq.spec_token_ids = []
        self.block_manager.free(seq.block_table)
        seq.num_computed_tokens = seq.num_cached_blocks = 0
        self.num_preemptions += 1
        self.add(seq)

    def update(self, out: SchedulerOutput, num_rejected: list[int] | None = None) -> None:
        """Records the tokens the step computed, less the speculative ones the model rejected (their
        KV rolled back, the blocks that held only them freed); names full blocks in the prefix cache."""
        cache = self.block_manager.prefix_cache
        for seq, num_tokens, rejected in zip(out.seqs, out.num_new_tokens, num_rejected or [0] * len(out.seqs)):
            seq.num_computed_tokens += num_tokens - rejected
            # Frees the blocks of rejected proposals, and any a proposer reserved for a step that
            # then left its proposals out.
            self.block_manager.trim(seq.block_table, seq.num_computed_tokens)
            seq.spec_token_ids = []
            if cache is not None:
                self._cache_full_blocks(seq, cache)

    def _cache_full_blocks(self, seq: Sequence, cache: PrefixCache) -> None:
        # Accepted proposals are computed but join token_ids only after this: name those blocks later.
        num_full = min(seq.num_computed_tokens, seq.num_tokens) // self.block_manager.block_size
        if num_full <= seq.num_cached_blocks:
            return
        chain_hashes(seq.token_ids, self.block_manager.block_size, num_full, seq.block_hashes, seq.cache_salt)
        for i in range(seq.num_cached_blocks, num_full):
            cache.insert(seq.block_table[i], seq.block_hashes[i])
        seq.num_cached_blocks = num_full

    def finish(self, seq: Sequence, reason: str, stop_reason: int | str | None = None) -> None:
        """Ends a sequence and frees its blocks at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq.block_table)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason, seq.stop_reason = reason, stop_reason


def shared_prefix_len(num_prompt_tokens: int, block_size: int) -> int:
    """The prompt tokens that n > 1 samples share: whole blocks, leaving at least one to compute."""
    return (num_prompt_tokens - 1) // block_size * block_size
