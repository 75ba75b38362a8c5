"""The KV manager over ids alone: tables with holes, trimming, and the diffs the runner gets."""

from dataclasses import dataclass

from tokenmill.kv.kv_manager import KVCacheManager


@dataclass
class Req:
    seq_id: int
    token_ids: list[int]
    extra_keys: tuple = ()


def test_trim_gives_back_only_the_blocks_past_the_kept_tokens():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    kv.allocate(3, 13)
    kv.trim(3, 9)  # 9 tokens need 3 blocks: the fourth goes back
    assert kv.block_table(3) == [0, 1, 2] and kv.num_free_blocks == 5
    kv.trim(3, 12)  # nothing past 12 tokens: nothing changes
    assert kv.block_table(3) == [0, 1, 2]


def test_the_runner_hears_of_each_change_once():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False, group_windows=(4,))
    kv.allocate(1, 8)
    assert kv.take_changes(1) == (0, [0, 1])
    assert kv.take_changes(1) == (2, [])
    kv.allocate(1, 13)
    kv.trim(1, 9)  # blocks 2 and 3 taken, then 3 given back: the diff starts where the table changed
    assert kv.take_changes(1) == (2, [2])
    kv.free_behind(1, 8)  # the query at 8 reads 5..8: block 0 falls behind the window
    assert kv.take_changes(1) == (0, [kv.null_block, 1, 2])
    kv.free(1)


def test_prefix_hits_come_from_the_manager():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    first = Req(0, list(range(12)))
    kv.allocate(0, 12)
    kv.cache_full_blocks(first, 12)
    assert kv.computed_blocks(Req(1, list(range(12)) + [99])) == 12
    assert kv.block_table(1) == [0, 1, 2] and kv.ref_counts[:3] == [2, 2, 2]
    assert kv.computed_blocks(Req(2, list(range(12)), ("salt",))) == 0  # other extra keys: no hit
    for seq_id in range(3):
        kv.free(seq_id)
    assert kv.num_free_blocks == 8 and len(kv.prefix_cache) == 3


def test_each_group_has_its_entries_and_a_windowed_group_frees_behind_its_window():
    # Two groups: whole context, and a window of 8 tokens (two blocks of 4).
    kv = KVCacheManager(num_blocks=32, block_size=4, enable_prefix_caching=False, group_windows=(None, 8))
    kv.allocate(0, 12)  # three blocks of tokens, both groups: entries interleave
    assert kv.block_table(0) == [0, 1, 2, 3, 4, 5]
    kv.free_behind(0, 12)  # the query at 12 reads 5..12: block 0 of the windowed group goes
    assert kv.block_table(0) == [0, kv.null_block, 2, 3, 4, 5] and kv.num_free_blocks == 27
    assert kv.take_changes(0) == (0, [0, kv.null_block, 2, 3, 4, 5])
    # A long chunk from 12 to 40: the windowed group takes no block out of reach of its first query.
    assert kv.can_allocate(0, 40, 12)
    kv.allocate(0, 40, 12)
    table = kv.block_table(0)
    assert table[0::2] == [0, 2, 4] + list(range(6, 20, 2)) and all(b != kv.null_block for b in table[0::2])
    kv.free_behind(0, 40)  # the next query, at 40, reads 33..40: blocks 8 and 9 of the windowed group
    held = [b for b in table[1::2] if b != kv.null_block]
    assert [i for i, b in enumerate(table[1::2]) if b != kv.null_block] == [8, 9] and len(held) == 2
    assert kv.num_free_blocks == 32 - 10 - 2
    kv.free(0)
    assert kv.num_free_blocks == 32 and kv.ref_counts == [0] * 32


def test_a_long_prompt_holds_the_whole_context_once_and_a_window_per_windowed_group():
    block, window, chunk = 16, 512, 256
    kv = KVCacheManager(num_blocks=4000, block_size=block, enable_prefix_caching=False,
                        group_windows=(None, window, window))  # fmt: skip
    computed, most = 0, 0
    while computed < 6000:  # prefill in chunks, then decode a token a step
        step = chunk if computed + chunk <= 5888 else 1
        kv.allocate(0, computed + step, computed)
        most = max(most, kv.num_blocks - kv.num_free_blocks)
        computed += step
        kv.free_behind(0, computed)
    per_window = -(-(window + chunk - 1) // block) + 1
    assert most <= -(-6000 // block) + 2 * per_window
    assert kv.num_blocks - kv.num_free_blocks <= 375 + 2 * (window // block + 2)  # decoding: the window alone


def test_a_prefix_whose_window_blocks_are_gone_is_not_offered():
    kv = KVCacheManager(num_blocks=32, block_size=4, group_windows=(None, 8))
    kv.allocate(0, 24)  # six blocks of tokens: the whole-context group's are 0, 2, .., 10; the window's 1, 3, .., 11
    kv.cache_full_blocks(Req(0, list(range(24))), 24)
    kv.free_behind(0, 24)  # the windowed group keeps its blocks 4 and 5 (tokens 16..23); the rest stay named
    kv.free(0)
    assert kv.computed_blocks(Req(1, list(range(24)) + [7])) == 24  # everything it needs is cached
    assert kv.block_table(1)[1::2] == [kv.null_block] * 4 + [9, 11]  # out of reach of its next query: holes
    kv.free(1)
    kv.prefix_cache.evict(11)  # the windowed group's last block is gone
    assert kv.computed_blocks(Req(2, list(range(24)) + [7])) == 20  # a shorter prefix, all within reach cached
    assert kv.block_table(2) == [0, kv.null_block, 2, kv.null_block, 4, kv.null_block, 6, 7, 8, 9]
    kv.free(2)


def test_with_attention_sinks_a_windowed_group_keeps_its_first_blocks_and_frees_the_middle():
    kv = KVCacheManager(num_blocks=16, block_size=4, group_windows=(8,), sink_tokens=4)
    kv.allocate(0, 8)
    for computed in range(8, 200):  # decode a long stream, a token a step
        kv.free_behind(0, computed)
        kv.allocate(0, computed + 1, computed)
        table = kv.block_table(0)
        assert table[0] != kv.null_block  # the sinks' block stays
        assert kv.num_blocks - kv.num_free_blocks <= 1 + 8 // 4 + 1  # the sinks, the window, one partial
    assert [i for i, b in enumerate(table) if b != kv.null_block] == [0, 48, 49]  # tokens 0..3 and 192..199
    assert kv.sequence_capacity(chunk=16) is None  # no group grows with the stream
    kv.free(0)
    assert kv.num_free_blocks == 16


def test_a_fork_is_refused_once_the_source_freed_blocks_its_window_would_read():
    kv = KVCacheManager(num_blocks=32, block_size=4, group_windows=(None, 8))
    kv.allocate(0, 12)
    assert kv.fork(0, 1, 2)  # the prompt's two full blocks, all still there
    assert kv.block_table(1) == kv.block_table(0)[:4]
    kv.allocate(0, 40, 12)
    kv.free_behind(0, 40)  # the source went on: its windowed blocks 0..7 are gone
    assert not kv.fork(0, 2, 2) and kv.block_table(2) == []  # sample 2 computes its prompt itself
    kv.free(0)
    kv.free(1)
    assert kv.num_free_blocks == 32
