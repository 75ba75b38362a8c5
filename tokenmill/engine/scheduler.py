"""Continuous batching at the iteration level, with chunked prefill and recompute preemption.

One rule, as in vLLM v1: each step spends a token budget so that every sequence's computed
tokens catch up with its known tokens. A decode is a sequence one token behind; a prefill is
one many tokens behind and may take several steps (chunks); a decode with proposed tokens takes
them too, whole or not at all. Running sequences go first, in priority order; waiting ones are
admitted while blocks, seats and budget last. When blocks run out, the lowest-priority, newest
running sequence is preempted: its blocks are freed and it is recomputed later from its tokens.
A sequence being admitted first takes its longest cached prefix from the KV manager, which also
names every block a step fills, so that a preempted sequence, a later turn or another request
can take it back. Each step leaves as a SchedulerOutput of ids and diffs (engine/messages.py).

With pipeline parallelism several steps are in flight at once; a sequence in one of them is not
scheduled again (nor preempted) until that step's output is back (`update`, oldest step first),
and each step takes at most its share of the running sequences, so that the micro-batches even out.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable

from tokenmill.config import SchedulerConfig
from tokenmill.engine.messages import CachedSequence, NewSequence, RunnerOutput, SchedulerOutput
from tokenmill.engine.sequence import Sequence, SequenceStatus
from tokenmill.kv.kv_manager import KVCacheManager


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, pipeline_depth: int = 1,
                 remote_prefix: Callable[[Sequence], None] | None = None) -> None:  # fmt: skip
        """pipeline_depth: the steps in flight at once. remote_prefix: called as a sequence is first
        admitted, it may give the sequence blocks already holding its prompt's KV (disaggregated
        decode pulls them from a prefill instance), as a prefix-cache hit does."""
        self.config = config
        self.kv = kv
        self.pipeline_depth, self.remote_prefix = pipeline_depth, remote_prefix
        self.waiting: list[Sequence] = []  # sorted by schedule_key
        self.running: list[Sequence] = []  # sorted by schedule_key
        self.num_preemptions = 0
        self._finished_ids: list[int] = []  # ended since the last step, for the runner to forget
        self._preempted_ids: list[int] = []  # preempted, for the runner to forget, once a step carries them
        self._scheduled: list[tuple[Sequence, int]] = []  # the step being built: sequences and token counts
        self._in_flight: deque[list[tuple[Sequence, int]]] = deque()  # steps sent whose output is not back
        self._busy: set[int] = set()  # the ids of the sequences in those steps

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.schedule_key)

    # ---- one step ---------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """The next step (empty if nothing can run now); a non-empty one counts as in flight until update."""
        self._busy = {seq.seq_id for step in self._in_flight for seq, _ in step}
        self._scheduled, preempted = [], []
        budget = self._schedule_running(self.config.max_num_batched_tokens, preempted)
        if not preempted:
            self._schedule_waiting(budget)
        return self._output(preempted)

    def _schedule_running(self, budget: int, preempted: list[Sequence]) -> int:
        share = math.ceil(len(self.running) / self.pipeline_depth)  # this step's part of the running sequences
        i = 0
        while i < len(self.running) and budget > 0 and len(self._scheduled) < share:
            seq = self.running[i]
            if seq.seq_id in self._busy:
                i += 1
                continue
            num_tokens = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if num_tokens + len(seq.spec_token_ids) <= budget:  # proposals go whole or not at all
                num_tokens += len(seq.spec_token_ids)
            else:
                seq.spec_token_ids = []
            if not self._make_room(seq, num_tokens, preempted):
                break  # seq was preempted (everything after it already was), or waits for blocks in flight
            self._allocate(seq, num_tokens)
            self._scheduled.append((seq, num_tokens))
            budget -= num_tokens
            i += 1
        return budget

    def _make_room(self, seq: Sequence, num_tokens: int, preempted: list[Sequence]) -> bool:
        """Preempts from the back of the running list (sequences in flight excepted) until seq's new
        tokens fit; False if seq went, or if only sequences in flight could make room: seq then
        waits for their step to come back, keeping its blocks."""
        while not self.kv.can_allocate(seq.seq_id, self._tokens_to_hold(seq, num_tokens), seq.num_computed_tokens):
            victim = next(s for s in reversed(self.running) if s.seq_id not in self._busy)
            if victim is seq and self._busy:
                return False
            self._preempt(victim)
            preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _tokens_to_hold(self, seq: Sequence, num_tokens: int) -> int:
        """The step's tokens, and room for proposers that write KV ahead (a draft model's guesses)."""
        return seq.num_computed_tokens + num_tokens + self.config.num_lookahead_tokens

    def _allocate(self, seq: Sequence, num_tokens: int) -> None:
        self.kv.allocate(seq.seq_id, self._tokens_to_hold(seq, num_tokens), seq.num_computed_tokens)

    def _schedule_waiting(self, budget: int) -> None:
        for seq in list(self.waiting):
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                return
            if not self._take_shared_prefix(seq):
                continue  # its prompt's computing sample is not far enough yet
            if not self._adapter_fits(seq):
                continue  # every LoRA slot serves running sequences: it waits, the others go on
            if self.remote_prefix is not None:
                self.remote_prefix(seq)
            self._take_cached_prefix(seq)
            num_tokens = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self.kv.can_allocate(seq.seq_id, self._tokens_to_hold(seq, num_tokens), seq.num_computed_tokens):
                self._release_prefix(seq)
                return
            self._allocate(seq, num_tokens)
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: s.schedule_key)
            self._scheduled.append((seq, num_tokens))
            budget -= num_tokens

    def _adapter_fits(self, seq: Sequence) -> bool:
        """The running sequences use at most max_loras adapters: the runner has a slot for each."""
        if seq.lora_request is None:
            return True
        running = {s.lora_request.lora_int_id for s in self.running if s.lora_request is not None}
        return seq.lora_request.lora_int_id in running or len(running) < self.config.max_loras

    def _take_shared_prefix(self, seq: Sequence) -> bool:
        """For sample k > 0 of an n > 1 request: reuse the full prompt blocks of sample 0."""
        source = seq.prefix_source
        if source is None or self.kv.block_table(seq.seq_id):
            return True
        if source.is_finished:  # aborted before it computed the prompt: compute it ourselves
            seq.prefix_source = None
            return True
        shared = shared_prefix_len(seq.num_prompt_tokens, self.kv.block_size)
        if source.status is not SequenceStatus.RUNNING or source.num_computed_tokens < shared:
            return False
        if self.kv.fork(source.seq_id, seq.seq_id, shared // self.kv.block_size):
            seq.num_computed_tokens = shared
        else:  # its window's blocks are gone: compute the prompt ourselves
            seq.prefix_source = None
        return True

    def _take_cached_prefix(self, seq: Sequence) -> None:
        if seq.returns_prompt_rows or self.kv.block_table(seq.seq_id):
            return
        seq.num_computed_tokens = self.kv.computed_blocks(seq)
        if seq.num_cached_tokens is None:  # first admission: what the response reports
            seq.num_cached_tokens = min(seq.num_computed_tokens, seq.num_prompt_tokens)
            self.kv.record_query(seq.num_prompt_tokens, seq.num_cached_tokens)

    def _release_prefix(self, seq: Sequence) -> None:
        """Gives back blocks taken for seq (shared or cached) when it cannot be admitted after all."""
        self.kv.free(seq.seq_id, keep_hashes=True)
        seq.num_computed_tokens = 0

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        seq.spec_token_ids = []
        self.kv.free(seq.seq_id, keep_hashes=True)
        seq.num_computed_tokens = seq.num_tokens_sent = 0
        self.num_preemptions += 1
        self.add(seq)

    def _output(self, preempted: list[Sequence]) -> SchedulerOutput:
        self._preempted_ids += [s.seq_id for s in preempted]
        out = SchedulerOutput()
        if self._scheduled:  # an empty step reaches no runner: the ids wait for the next one
            out.finished_seq_ids.extend(self._finished_ids)
            out.preempted_seq_ids.extend(self._preempted_ids)
            self._finished_ids, self._preempted_ids = [], []
        for seq, num_tokens in self._scheduled:
            out.num_scheduled_tokens[seq.seq_id] = num_tokens
            if seq.spec_token_ids:
                out.spec_token_ids[seq.seq_id] = list(seq.spec_token_ids)
            start, new_blocks = self.kv.take_changes(seq.seq_id)
            if seq.num_tokens_sent == 0:
                out.new_seqs.append(NewSequence(
                    seq.seq_id, list(seq.token_ids), seq.num_prompt_tokens, seq.params, seed=seq.seed,
                    block_ids=new_blocks, num_computed_tokens=seq.num_computed_tokens,
                    returns_prompt_rows=seq.returns_prompt_rows, lora_request=seq.lora_request,
                ))  # fmt: skip
            else:
                out.cached_seqs.append(CachedSequence(seq.seq_id, seq.token_ids[seq.num_tokens_sent :], start,
                                                      new_blocks, seq.num_computed_tokens))
            seq.num_tokens_sent = seq.num_tokens
        if self._scheduled:
            self._in_flight.append(self._scheduled)
        return out

    # ---- after the step ---------------------------------------------------------------------

    def update(self, result: RunnerOutput) -> None:
        """Records the tokens the oldest step in flight computed, less the proposals the model
        rejected (their KV rolled back, blocks that held only them freed); names full blocks in the
        prefix cache; keeps the runner's proposals for the next step. The sampled tokens join later
        (append). Sequences that ended while the step was in flight are skipped."""
        for seq, num_tokens in self._in_flight.popleft():
            if seq.status is not SequenceStatus.RUNNING:
                continue
            proposed = len(seq.spec_token_ids) if seq.seq_id in result.sampled_token_ids else 0
            rejected = proposed - (len(result.sampled_token_ids[seq.seq_id]) - 1) if proposed else 0
            seq.num_computed_tokens += num_tokens - rejected
            self.kv.trim(seq.seq_id, seq.num_computed_tokens + self.config.num_lookahead_tokens)
            self.kv.cache_full_blocks(seq, seq.num_computed_tokens)
            self.kv.free_behind(seq.seq_id, seq.num_computed_tokens)  # a sliding window's blocks left behind
            seq.spec_token_ids = result.spec_token_ids.get(seq.seq_id, [])

    def finish(self, seq: Sequence, reason: str, stop_reason: int | str | None = None,
               keep_blocks: bool = False) -> None:  # fmt: skip
        """Ends a sequence and frees its blocks at once (keep_blocks: its caller frees them later)."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        if not keep_blocks:
            self.kv.free(seq.seq_id)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        seq.spec_token_ids = []
        self._finished_ids.append(seq.seq_id)


def shared_prefix_len(num_prompt_tokens: int, block_size: int) -> int:
    """The prompt tokens that n > 1 samples share: whole blocks, leaving at least one to compute."""
    return (num_prompt_tokens - 1) // block_size * block_size
