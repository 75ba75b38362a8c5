"""Which layers share a block table: the KV cache's groups, for models whose layers see different spans.

A model whose layers all see the whole context (llama) has one group: one block table per
sequence, each block holding every layer's K and V for its tokens. A model with sliding-window
layers (Gemma 3: five of every six see the last 512 tokens) would waste most of that on the
windowed layers, whose old tokens no query reads again. So, as vLLM's hybrid KV cache manager,
layers split into groups of equal size, each group of one span (window, or None for the whole
context), and each sequence has one block table per group. A block holds the K and V of one
group's layers, so blocks are alike whatever group owns them and all groups draw on one pool; a
windowed group's table frees the blocks behind its window (kv/kv_manager.py). The pool holds
`num_slots` layers per block; the i-th layer of any group lives in slot i.

Gemma 3 270M, 3 global and 15 windowed layers: six groups of three layers (one global, five
windowed), three slots. A sequence of 6,000 tokens holds 375 blocks of the global group and
about 34 of each windowed one (its window and the step's chunk), not 6 x 375.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class KVLayout:
    group_windows: tuple[int | None, ...]  # each group's span in tokens (None: the whole context)
    layer_group: tuple[int, ...]  # each layer's group
    layer_slot: tuple[int, ...]  # and its place in that group's blocks
    num_slots: int  # layers in a block

    @property
    def num_groups(self) -> int:
        return len(self.group_windows)

    @classmethod
    def single(cls, num_layers: int, window: int | None = None) -> KVLayout:
        """Every layer in one group: one table per sequence."""
        return cls((window,), (0,) * num_layers, tuple(range(num_layers)), num_layers)

    @classmethod
    def for_windows(cls, windows: list[int | None], hybrid: bool = True) -> KVLayout:
        """The groups for layers of these spans. One span: one group. Not hybrid: one group that
        frees nothing, whose windowed layers mask what they do not see (the reference)."""
        spans = list(dict.fromkeys(windows))
        if not hybrid or len(spans) == 1:
            return cls.single(len(windows), spans[0] if hybrid else None)
        layers_of = {span: [i for i, w in enumerate(windows) if w == span] for span in spans}
        size = min(len(layers) for layers in layers_of.values())  # the rarest span's layers make one group
        group_windows: list[int | None] = []
        layer_group, layer_slot = [0] * len(windows), [0] * len(windows)
        for span, layers in layers_of.items():
            for k in range(math.ceil(len(layers) / size)):  # the last group of a span may have empty slots
                for slot, layer in enumerate(layers[k * size : (k + 1) * size]):
                    layer_group[layer], layer_slot[layer] = len(group_windows), slot
                group_windows.append(span)
        return cls(tuple(group_windows), tuple(layer_group), tuple(layer_slot), size)
