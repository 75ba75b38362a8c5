"""The scheduler over ids alone: toy block pools, no model."""

from tokenmill.config import SchedulerConfig
from tokenmill.engine.scheduler import Scheduler
from tokenmill.engine.sequence import Sequence, SequenceStatus
from tokenmill.kv.block_manager import BlockManager
from tokenmill.sampling_params import SamplingParams


def make_scheduler(num_blocks=8, block_size=4, max_num_seqs=4, max_tokens=8):
    bm = BlockManager(num_blocks, block_size)
    return Scheduler(SchedulerConfig(max_num_seqs, max_tokens), bm), bm


_ids = iter(range(10**6))


def seq(prompt_len, priority=0):
    return Sequence(next(_ids), f"r{prompt_len}", 0, list(range(prompt_len)), SamplingParams(), priority)


def run_step(sched, out, sampled_token=7):
    """What the engine does after the model ran: record computed tokens, append sampled ones."""
    sched.update(out)
    for s in out.seqs:
        if s.num_computed_tokens == s.num_tokens:
            s.append_token(sampled_token)


def test_chunked_prefill_shares_the_budget_with_decodes():
    sched, _ = make_scheduler(max_tokens=8)
    a, b = seq(3), seq(20)
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    assert [(s, n) for s, n in zip(out.seqs, out.num_new_tokens)] == [(a, 3), (b, 5)]
    run_step(sched, out)
    out = sched.schedule()  # a decodes one token, b's prefill takes the rest of the budget
    assert out.num_new_tokens == [1, 7]
    run_step(sched, out)
    assert b.num_computed_tokens == 12


def test_blocks_are_taken_as_needed_and_freed_on_finish():
    sched, bm = make_scheduler(num_blocks=8, block_size=4)
    a = seq(5)
    sched.add(a)
    out = sched.schedule()
    assert a.block_table == [0, 1]
    run_step(sched, out)
    sched.finish(a, "stop")
    assert a.block_table == [] and bm.num_free_blocks == 8
    assert a.status is SequenceStatus.FINISHED and not sched.has_unfinished


def test_preemption_takes_the_newest_lowest_priority_and_recomputes_it():
    sched, bm = make_scheduler(num_blocks=3, block_size=4, max_tokens=16)
    old, new = seq(4), seq(4)
    sched.add(old)
    sched.add(new)
    run_step(sched, sched.schedule())  # both prompts fill one block each, one token sampled each
    assert (old.block_table, new.block_table) == ([0], [1])
    out = sched.schedule()  # both need a second block; only one is free
    assert out.seqs == [old] and out.preempted == [new]
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0 and new.block_table == []
    assert old.block_table == [0, 2]
    run_step(sched, out)
    sched.finish(old, "stop")
    out = sched.schedule()  # the preempted sequence recomputes its prompt and its sampled token
    assert out.seqs == [new] and out.num_new_tokens == [5]


def test_priority_orders_admission_and_protects_from_preemption():
    sched, _ = make_scheduler(num_blocks=2, block_size=4, max_num_seqs=4, max_tokens=16)
    low, high = seq(4, priority=5), seq(4, priority=0)
    sched.add(low)
    sched.add(high)
    out = sched.schedule()
    assert out.seqs == [high, low]
    run_step(sched, out)
    out = sched.schedule()
    assert out.seqs == [high] and out.preempted == [low]


def test_max_num_seqs_caps_the_running_set():
    sched, _ = make_scheduler(num_blocks=16, max_num_seqs=2, max_tokens=64)
    seqs = [seq(2) for _ in range(3)]
    for s in seqs:
        sched.add(s)
    out = sched.schedule()
    assert out.seqs == seqs[:2] and sched.waiting == [seqs[2]]


def test_n_samples_share_the_prompt_blocks_of_the_first():
    sched, bm = make_scheduler(num_blocks=8, block_size=4, max_tokens=64)
    leader = seq(10)
    follower = Sequence(next(_ids), "n", 1, list(range(10)), SamplingParams(n=2), prefix_source=leader)
    sched.add(leader)
    sched.add(follower)
    out = sched.schedule()
    # the follower waits until the leader computed the two full blocks, then shares them
    assert out.seqs == [leader] and follower.block_table == []
    run_step(sched, out)
    out = sched.schedule()
    assert follower.block_table[:2] == leader.block_table[:2]
    assert follower.num_computed_tokens == 8 and out.num_new_tokens == [1, 2]
    assert bm.ref_counts[leader.block_table[0]] == 2
