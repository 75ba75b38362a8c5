import pytest

from tokenmill.kv.block_manager import BlockManager


def test_allocates_only_as_tokens_arrive():
    bm = BlockManager(num_blocks=8, block_size=4)
    table: list[int] = []
    bm.allocate(table, 1)
    assert table == [0]
    bm.allocate(table, 4)  # still fits in block 0
    assert table == [0]
    bm.allocate(table, 9)
    assert table == [0, 1, 2]
    assert bm.num_free_blocks == 5
    assert bm.ref_counts[:4] == [1, 1, 1, 0]


def test_free_returns_blocks_and_they_are_reused_in_order():
    bm = BlockManager(num_blocks=4, block_size=2)
    a: list[int] = []
    b: list[int] = []
    bm.allocate(a, 4)
    bm.allocate(b, 2)
    assert (a, b) == ([0, 1], [2])
    bm.free(a)
    assert a == [] and bm.num_free_blocks == 3
    c: list[int] = []
    bm.allocate(c, 6)
    assert c == [3, 1, 0]  # the never-used block first, then freed ones (last block freed first)


def test_shared_blocks_survive_until_the_last_reference_goes():
    bm = BlockManager(num_blocks=4, block_size=2)
    leader: list[int] = []
    bm.allocate(leader, 4)
    follower = bm.share(leader[:1])
    assert follower == [0] and bm.ref_counts[0] == 2
    bm.allocate(follower, 3)
    assert follower == [0, 2]
    bm.free(leader)
    assert bm.ref_counts[:3] == [1, 0, 1] and bm.num_free_blocks == 2
    bm.free(follower)
    assert bm.num_free_blocks == 4 and bm.ref_counts == [0, 0, 0, 0]


def test_over_allocation_is_refused_without_side_effects():
    bm = BlockManager(num_blocks=2, block_size=2)
    table: list[int] = []
    assert not bm.can_allocate(table, 5)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(table, 5)
    assert table == [] and bm.num_free_blocks == 2
