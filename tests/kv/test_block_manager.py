import pytest

from tokenmill.kv.block_manager import BlockManager


def test_take_hands_out_blocks_from_the_front_referenced_once():
    bm = BlockManager(num_blocks=8)
    assert bm.take(3) == [0, 1, 2] and bm.take(0) == []
    assert bm.num_free_blocks == 5
    assert bm.ref_counts[:4] == [1, 1, 1, 0]


def test_free_returns_blocks_and_they_are_reused_in_order():
    bm = BlockManager(num_blocks=4)
    a, b = bm.take(2), bm.take(1)
    assert (a, b) == ([0, 1], [2])
    bm.free(a)
    assert a == [] and bm.num_free_blocks == 3
    assert bm.take(3) == [3, 1, 0]  # the never-used block first, then freed ones (last block freed first)


def test_shared_blocks_survive_until_the_last_reference_goes():
    bm = BlockManager(num_blocks=4)
    leader = bm.take(2)
    follower = bm.share(leader[:1])
    assert follower == [0] and bm.ref_counts[0] == 2
    follower += bm.take(1)
    assert follower == [0, 2]
    bm.free(leader)
    assert bm.ref_counts[:3] == [1, 0, 1] and bm.num_free_blocks == 2
    bm.free(follower)
    assert bm.num_free_blocks == 4 and bm.ref_counts == [0, 0, 0, 0]


def test_over_allocation_is_refused_without_side_effects():
    bm = BlockManager(num_blocks=2)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.take(3)
    assert bm.num_free_blocks == 2 and bm.ref_counts == [0, 0]
