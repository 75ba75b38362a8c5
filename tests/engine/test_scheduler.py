"""The scheduler over ids alone: toy block pools, no model."""

from tokenmill.config import SchedulerConfig
from tokenmill.engine.messages import RunnerOutput
from tokenmill.engine.scheduler import Scheduler
from tokenmill.engine.sequence import Sequence, SequenceStatus
from tokenmill.kv.kv_manager import KVCacheManager
from tokenmill.sampling_params import SamplingParams


def make_scheduler(num_blocks=8, block_size=4, max_num_seqs=4, max_tokens=8, lookahead=0):
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)
    return Scheduler(SchedulerConfig(max_num_seqs, max_tokens, lookahead), kv), kv


_ids = iter(range(10**6))


def seq(prompt_len, priority=0):
    return Sequence(next(_ids), f"r{prompt_len}", 0, list(range(prompt_len)), SamplingParams(), priority)


def scheduled(out):
    return list(out.num_scheduled_tokens.items())


def run_step(sched, out, seqs, sampled_token=7, proposals=None):
    """What the engine does after the model ran: record computed tokens, append sampled ones."""
    caught_up = [s for s in seqs if s.seq_id in out.num_scheduled_tokens
                 and s.num_computed_tokens + out.num_scheduled_tokens[s.seq_id] == s.num_tokens]
    sched.update(RunnerOutput(sampled_token_ids={s.seq_id: [sampled_token] for s in caught_up},
                              spec_token_ids=proposals or {}))
    for s in caught_up:
        s.append_token(sampled_token)


def test_chunked_prefill_shares_the_budget_with_decodes():
    sched, _ = make_scheduler(max_tokens=8)
    a, b = seq(3), seq(20)
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    assert scheduled(out) == [(a.seq_id, 3), (b.seq_id, 5)]
    run_step(sched, out, [a, b])
    out = sched.schedule()  # a decodes one token, b's prefill takes the rest of the budget
    assert list(out.num_scheduled_tokens.values()) == [1, 7]
    run_step(sched, out, [a, b])
    assert b.num_computed_tokens == 12


def test_blocks_are_taken_as_needed_and_freed_on_finish():
    sched, kv = make_scheduler(num_blocks=8, block_size=4)
    a = seq(5)
    sched.add(a)
    out = sched.schedule()
    assert kv.block_table(a.seq_id) == [0, 1]
    run_step(sched, out, [a])
    sched.finish(a, "stop")
    assert kv.block_table(a.seq_id) == [] and kv.num_free_blocks == 8
    assert a.status is SequenceStatus.FINISHED and not sched.has_unfinished


def test_preemption_takes_the_newest_lowest_priority_and_recomputes_it():
    sched, kv = make_scheduler(num_blocks=3, block_size=4, max_tokens=16)
    old, new = seq(4), seq(4)
    sched.add(old)
    sched.add(new)
    run_step(sched, sched.schedule(), [old, new])  # both prompts fill one block each, one token sampled each
    assert (kv.block_table(old.seq_id), kv.block_table(new.seq_id)) == ([0], [1])
    out = sched.schedule()  # both need a second block; only one is free
    assert scheduled(out) == [(old.seq_id, 1)] and out.preempted_seq_ids == [new.seq_id]
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0 and kv.block_table(new.seq_id) == []
    assert kv.block_table(old.seq_id) == [0, 2]
    run_step(sched, out, [old, new])
    sched.finish(old, "stop")
    out = sched.schedule()  # the preempted sequence recomputes its prompt and its sampled token
    assert scheduled(out) == [(new.seq_id, 5)]
    # ...sent whole again, since the runner forgot it; the finished one is named for it to forget
    assert [(s.seq_id, s.token_ids) for s in out.new_seqs] == [(new.seq_id, [0, 1, 2, 3, 7])]
    assert out.finished_seq_ids == [old.seq_id]


def test_priority_orders_admission_and_protects_from_preemption():
    sched, _ = make_scheduler(num_blocks=2, block_size=4, max_num_seqs=4, max_tokens=16)
    low, high = seq(4, priority=5), seq(4, priority=0)
    sched.add(low)
    sched.add(high)
    out = sched.schedule()
    assert [i for i, _ in scheduled(out)] == [high.seq_id, low.seq_id]
    run_step(sched, out, [low, high])
    out = sched.schedule()
    assert [i for i, _ in scheduled(out)] == [high.seq_id] and out.preempted_seq_ids == [low.seq_id]


def test_max_num_seqs_caps_the_running_set():
    sched, _ = make_scheduler(num_blocks=16, max_num_seqs=2, max_tokens=64)
    seqs = [seq(2) for _ in range(3)]
    for s in seqs:
        sched.add(s)
    out = sched.schedule()
    assert [i for i, _ in scheduled(out)] == [s.seq_id for s in seqs[:2]] and sched.waiting == [seqs[2]]


def test_n_samples_share_the_prompt_blocks_of_the_first():
    sched, kv = make_scheduler(num_blocks=8, block_size=4, max_tokens=64)
    leader = seq(10)
    follower = Sequence(next(_ids), "n", 1, list(range(10)), SamplingParams(n=2), prefix_source=leader)
    sched.add(leader)
    sched.add(follower)
    out = sched.schedule()
    # the follower waits until the leader computed the two full blocks, then shares them
    assert [i for i, _ in scheduled(out)] == [leader.seq_id] and kv.block_table(follower.seq_id) == []
    run_step(sched, out, [leader, follower])
    out = sched.schedule()
    assert kv.block_table(follower.seq_id)[:2] == kv.block_table(leader.seq_id)[:2]
    assert follower.num_computed_tokens == 8 and list(out.num_scheduled_tokens.values()) == [1, 2]
    assert kv.ref_counts[kv.block_table(leader.seq_id)[0]] == 2


def test_after_its_first_step_a_sequence_is_sent_as_a_diff():
    sched, kv = make_scheduler(num_blocks=8, block_size=4, max_tokens=8)
    a = seq(3)
    sched.add(a)
    first = sched.schedule()
    assert [(s.seq_id, s.token_ids, s.block_ids) for s in first.new_seqs] == [(a.seq_id, [0, 1, 2], [0])]
    run_step(sched, first, [a])
    for token in (8, 9):  # the second step holds 5 tokens: block 0 is full, block 1 joins
        out = sched.schedule()
        run_step(sched, out, [a], sampled_token=token)
    [diff] = out.cached_seqs
    assert not out.new_seqs
    assert (diff.new_token_ids, diff.table_start, diff.new_block_ids, diff.num_computed_tokens) == ([8], 1, [1], 4)


def test_proposals_are_scheduled_whole_or_dropped_for_lack_of_budget():
    sched, kv = make_scheduler(num_blocks=8, block_size=4, max_tokens=4)
    a = seq(3)
    sched.add(a)
    run_step(sched, sched.schedule(), [a], proposals={a.seq_id: [5, 6, 7]})
    out = sched.schedule()  # 1 + 3 proposals fit the budget of 4
    assert scheduled(out) == [(a.seq_id, 4)] and out.spec_token_ids == {a.seq_id: [5, 6, 7]}
    # verification accepted one proposal: the rejected ones' KV is rolled back, their block freed
    sched.update(RunnerOutput(sampled_token_ids={a.seq_id: [5, 9]}, spec_token_ids={a.seq_id: [1, 2, 3, 4]}))
    a.token_ids += [5, 9]
    assert a.num_computed_tokens == 5 and kv.block_table(a.seq_id) == [0, 1]
    out = sched.schedule()  # 1 + 4 proposals exceed the budget: dropped, the token alone is scheduled
    assert scheduled(out) == [(a.seq_id, 1)] and out.spec_token_ids == {} and a.spec_token_ids == []


def test_lookahead_slots_are_kept_for_a_drafts_guesses():
    sched, kv = make_scheduler(num_blocks=8, block_size=4, max_tokens=8, lookahead=3)
    a = seq(4)
    sched.add(a)
    out = sched.schedule()  # 4 tokens, and 3 slots past them: two blocks
    assert kv.block_table(a.seq_id) == [0, 1]
    run_step(sched, out, [a])
    assert kv.block_table(a.seq_id) == [0, 1]  # computed 4 + 3 ahead still held


def test_two_steps_in_flight_take_disjoint_halves_of_the_running_sequences():
    kv = KVCacheManager(16, 4, enable_prefix_caching=False)
    sched = Scheduler(SchedulerConfig(4, 64, 0), kv, pipeline_depth=2)
    seqs = [seq(3) for _ in range(4)]
    for s in seqs:
        sched.add(s)
    run_step(sched, sched.schedule(), seqs)  # the four prompts are admitted together
    first = sched.schedule()
    second = sched.schedule()  # while the first is in flight
    assert len(first.num_scheduled_tokens) == len(second.num_scheduled_tokens) == 2
    assert not set(first.num_scheduled_tokens) & set(second.num_scheduled_tokens)
    assert sched.schedule().is_empty  # every sequence is in flight
    run_step(sched, first, seqs)
    assert set(sched.schedule().num_scheduled_tokens) == set(first.num_scheduled_tokens)


def test_a_sequence_waits_for_blocks_held_in_flight_rather_than_preempt_itself():
    kv = KVCacheManager(3, 4, enable_prefix_caching=False)
    sched = Scheduler(SchedulerConfig(4, 64, 0), kv, pipeline_depth=2)
    a, b = seq(4), seq(4)
    sched.add(a)
    sched.add(b)
    run_step(sched, sched.schedule(), [a, b])  # one full block each, one free
    first = sched.schedule()  # a takes the free block for its next token, and is in flight
    assert scheduled(first) == [(a.seq_id, 1)] and kv.num_free_blocks == 0
    second = sched.schedule()  # b needs a block too: only a, in flight, could give one
    assert second.is_empty and second.preempted_seq_ids == []
    assert b.status is SequenceStatus.RUNNING and b.num_computed_tokens == 4  # it waits, its KV kept


def test_preempted_ids_wait_for_a_step_that_reaches_the_runner():
    sched, kv = make_scheduler(num_blocks=1, block_size=4, max_tokens=16)
    a = seq(4)
    sched.add(a)
    run_step(sched, sched.schedule(), [a])  # its block is full; the next token needs a second one
    out = sched.schedule()
    assert out.is_empty and out.preempted_seq_ids == []  # it preempted itself: the step carries nothing
    sched.finish(a, "abort")
    b = seq(2)
    sched.add(b)
    out = sched.schedule()
    assert scheduled(out) == [(b.seq_id, 2)] and out.preempted_seq_ids == [a.seq_id]
