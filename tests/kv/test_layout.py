"""The KV groups of a model's layers, for Gemma 3's pattern and for models of one span."""

from tokenmill.kv.layout import KVLayout

GEMMA_270M = [None if (layer + 1) % 6 == 0 else 512 for layer in range(18)]  # global layers 5, 11, 17


def test_gemma_splits_into_one_global_and_five_windowed_groups_of_three_layers():
    layout = KVLayout.for_windows(GEMMA_270M)
    assert layout.num_slots == 3 and layout.group_windows == (512, 512, 512, 512, 512, None)
    assert [layout.layer_group[layer] for layer in (5, 11, 17)] == [5, 5, 5]
    assert [layout.layer_slot[layer] for layer in (5, 11, 17)] == [0, 1, 2]
    # Every (group, slot) holds one layer: no two layers share K and V memory.
    places = list(zip(layout.layer_group, layout.layer_slot))
    assert len(set(places)) == 18 and all(slot < 3 for _, slot in places)
    assert all(layout.group_windows[g] == GEMMA_270M[layer] for layer, g in enumerate(layout.layer_group))


def test_spans_that_do_not_divide_evenly_leave_empty_slots_in_the_last_group():
    layout = KVLayout.for_windows([None, 64, 64, None, 64, 64, 64])  # 2 global, 5 windowed
    assert layout.num_slots == 2 and layout.group_windows == (None, 64, 64, 64)
    assert layout.layer_group == (0, 1, 1, 0, 2, 2, 3) and layout.layer_slot == (0, 0, 1, 1, 0, 1, 0)


def test_one_span_or_no_hybrid_manager_is_one_group():
    assert KVLayout.for_windows([None] * 30) == KVLayout.single(30)
    assert KVLayout.for_windows([256] * 4).group_windows == (256,)  # every layer windowed: all can free
    reference = KVLayout.for_windows(GEMMA_270M, hybrid=False)  # masks, frees nothing
    assert reference.group_windows == (None,) and reference.num_slots == 18
