"""An approximate record of the prompts a backend has seen, for cache-aware routing.

A trie over fixed-size chunks of the prompt's text, a stand-in for the backend's prefix cache
(which works on blocks of tokens): the number of leading chunks a new prompt shares with any
prompt sent before is how much of it the backend likely still holds. Bounded: past max_nodes the
least recently used chunks are forgotten, as the backend's cache evicts its oldest blocks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

CHUNK_CHARS = 32  # about a KV block's worth of tokens (16 tokens of 2-4 characters)


@dataclass(eq=False)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    last_used: int = 0


class PrefixTree:
    def __init__(self, max_nodes: int = 100_000) -> None:
        self.root, self.max_nodes, self.num_nodes = _Node(), max_nodes, 0
        self._clock = itertools.count(1)

    def match(self, text: str) -> int:
        """The characters of text's longest prefix, in whole chunks, that an inserted text shared."""
        node, matched = self.root, 0
        for chunk in _chunks(text):
            node = node.children.get(chunk)
            if node is None:
                break
            matched += len(chunk)
        return matched

    def insert(self, text: str) -> None:
        now, node = next(self._clock), self.root
        for chunk in _chunks(text):
            child = node.children.get(chunk)
            if child is None:
                child = node.children[chunk] = _Node()
                self.num_nodes += 1
            child.last_used = now
            node = child
        if self.num_nodes > self.max_nodes:
            self._evict(self.num_nodes - self.max_nodes * 3 // 4)

    def _evict(self, count: int) -> None:
        """Forgets about count of the least recently used chunks, with everything after them (a
        chunk is never used later than the chunks before it), then counts what is left."""
        nodes = []
        stack = [(self.root, key, child) for key, child in self.root.children.items()]
        while stack:
            parent, key, node = stack.pop()
            nodes.append((node.last_used, id(node), parent, key))
            stack.extend((node, k, c) for k, c in node.children.items())
        nodes.sort(key=lambda n: n[:2])
        for _, _, parent, key in nodes[:count]:
            parent.children.pop(key, None)  # under a chunk forgotten already: nothing more to do
        self.num_nodes = _size(self.root) - 1


def _chunks(text: str) -> list[str]:
    return [text[i : i + CHUNK_CHARS] for i in range(0, len(text) - CHUNK_CHARS + 1, CHUNK_CHARS)]


def _size(node: _Node) -> int:
    return 1 + sum(_size(child) for child in node.children.values())

