"""Prefix caching over ids alone: toy pools, exact block ids, reference counts, hits, eviction order."""

from tokenmill.config import SchedulerConfig
from tokenmill.engine.messages import RunnerOutput
from tokenmill.engine.scheduler import Scheduler
from tokenmill.engine.sequence import Sequence
from tokenmill.kv.block_hash import chain_hashes
from tokenmill.kv.kv_manager import KVCacheManager
from tokenmill.sampling_params import SamplingParams

_ids = iter(range(10**6))


def make(num_blocks=8, block_size=4, max_tokens=64):
    kv = KVCacheManager(num_blocks, block_size)
    return Scheduler(SchedulerConfig(8, max_tokens), kv), kv


def seq(tokens: list[int], salt: str | None = None) -> Sequence:
    return Sequence(next(_ids), f"r{next(_ids)}", 0, tokens, SamplingParams(), cache_salt=salt)


def prefill(sched: Scheduler, *seqs: Sequence) -> list[int]:
    """Admits and fully computes the sequences' prompts in one step; returns tokens computed each."""
    for s in seqs:
        sched.add(s)
    out = sched.schedule()
    sched.update(RunnerOutput())
    return [out.num_scheduled_tokens[s.seq_id] for s in seqs if s.seq_id in out.num_scheduled_tokens]


def test_the_hash_chain_covers_the_whole_prefix_and_the_salt():
    a, b, c = [], [], []
    chain_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4, 2, a, None)
    chain_hashes([9, 2, 3, 4, 5, 6, 7, 8], 4, 2, b, None)  # same second block, different first
    chain_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4, 2, c, ("tenant-b",))
    assert len(set(a + b + c)) == 6


def test_a_finished_prompt_is_reused_and_one_token_is_always_computed():
    sched, bm = make()
    first = seq(list(range(10)))
    assert prefill(sched, first) == [10]
    assert bm.block_table(first.seq_id) == [0, 1, 2] and len(bm.prefix_cache) == 2  # blocks 0 and 1 are full
    sched.finish(first, "stop")
    assert bm.ref_counts[:3] == [0, 0, 0] and bm.free_block_ids() == [3, 4, 5, 6, 7, 2, 1, 0]

    same = seq(list(range(10)))
    assert prefill(sched, same) == [2]  # 8 tokens cached, the last 2 computed
    assert bm.block_table(same.seq_id) == [0, 1, 3] and same.num_cached_tokens == 8
    assert bm.ref_counts[:4] == [1, 1, 0, 1]

    exact = seq(list(range(8)))  # a prompt of exactly two blocks: its last token is recomputed
    assert prefill(sched, exact) == [4]
    assert bm.block_table(exact.seq_id) == [0, 4] and exact.num_cached_tokens == 4
    assert bm.ref_counts[:5] == [2, 1, 0, 1, 1]
    assert bm.prefix_cache.num_queried_tokens == 10 + 10 + 8
    assert bm.prefix_cache.num_hit_tokens == 0 + 8 + 4


def test_requests_in_flight_together_share_a_prefix():
    sched, bm = make()
    a = seq(list(range(12)) + [100])
    prefill(sched, a)
    b = seq(list(range(12)) + [200, 201])  # a is still running
    assert prefill(sched, b) == [2]
    assert bm.block_table(a.seq_id)[:3] == bm.block_table(b.seq_id)[:3] == [0, 1, 2]
    assert bm.ref_counts[:3] == [2, 2, 2] and bm.block_table(b.seq_id)[3] == 4


def test_a_salt_keeps_caches_apart():
    sched, bm = make()
    prefill(sched, seq(list(range(9)), salt="x"))
    other = seq(list(range(9)), salt="y")
    assert prefill(sched, other) == [9] and other.num_cached_tokens == 0


def test_eviction_takes_the_least_recently_freed_and_leaves_before_parents():
    sched, bm = make(num_blocks=6)
    old, new = seq(list(range(8)) + [50]), seq(list(range(20, 28)) + [60])
    prefill(sched, old)  # blocks 0, 1 (cached), 2
    prefill(sched, new)  # blocks 3, 4 (cached), 5
    sched.finish(old, "stop")
    sched.finish(new, "stop")
    assert bm.free_block_ids() == [2, 1, 0, 5, 4, 3]  # each table tail first, older table first
    grower = seq(list(range(40, 49)))  # needs 3 blocks: takes 2, 1, 0 and evicts old's prefix
    prefill(sched, grower)
    assert bm.block_table(grower.seq_id) == [2, 1, 0]
    assert len(bm.prefix_cache) == 4  # old's two evicted, grower's two full blocks named
    again = seq(list(range(20, 28)) + [61])
    assert prefill(sched, again) == [1] and bm.block_table(again.seq_id)[:2] == [3, 4]  # new's prefix survived
    sched.finish(grower, "stop")
    sched.finish(again, "stop")
    gone = seq(list(range(8)) + [51])
    assert prefill(sched, gone) == [9] and gone.num_cached_tokens == 0  # old's prefix was evicted


def test_generated_tokens_are_cached_for_the_next_turn():
    sched, bm = make()
    turn1 = seq(list(range(6)))
    prefill(sched, turn1)
    for token in (70, 71, 72):  # three decode steps: tokens 6..8 computed, block 1 full after 8
        turn1.append_token(token)
        sched.schedule()
        sched.update(RunnerOutput())
    sched.finish(turn1, "stop")
    turn2 = seq(list(range(6)) + [70, 71, 72, 80, 81])
    assert prefill(sched, turn2) == [3] and turn2.num_cached_tokens == 8


def test_preemption_frees_blocks_to_the_cache_and_recompute_reuses_them():
    sched, bm = make(num_blocks=4)
    a = seq(list(range(9)))
    prefill(sched, a)
    sched._preempt(a)  # as when blocks run out: back to waiting, blocks freed but still named
    assert bm.ref_counts == [0, 0, 0, 0] and len(bm.prefix_cache) == 2
    out = sched.schedule()
    assert list(out.num_scheduled_tokens.items()) == [(a.seq_id, 1)] and bm.block_table(a.seq_id)[:2] == [0, 1]
