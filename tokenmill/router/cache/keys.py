"""What makes two requests the same answer: the keys of the response caches.

A request is cacheable only when its answer is fixed: greedy (temperature 0) or seeded. Its exact
key hashes everything that shapes the answer, in a normal form (key order, the path), leaving out
only what changes its delivery: streaming and its options, and `user`. The semantic cache splits a
chat request in two: the last user message, which it compares by meaning, and the rest, which must
match exactly (same model, same system prompt and history, same sampling fields).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

_DELIVERY_FIELDS = ("stream", "stream_options", "user")


def is_deterministic(body: dict) -> bool:
    """Temperature 0, or a seed: the same request gives the same answer. OpenAI's default temperature is 1."""
    temperature = body.get("temperature", 1.0)
    return body.get("seed") is not None or (isinstance(temperature, int | float) and temperature == 0)


def exact_key(path: str, body: dict) -> str:
    return _digest(path, {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS})


@dataclass(frozen=True)
class SemanticQuery:
    text: str  # the last user message: compared by meaning
    rest_key: str  # everything else: compared exactly


def semantic_query(path: str, body: dict) -> SemanticQuery | None:
    """A chat request whose last message is the user's, in plain text; None for anything else."""
    messages = body.get("messages")
    if not path.endswith("/chat/completions") or not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user" or not isinstance(last.get("content"), str):
        return None
    rest = {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS}
    rest["messages"] = [*messages[:-1], {**last, "content": None}]
    return SemanticQuery(last["content"], _digest(path, rest))


def _digest(path: str, fields: dict) -> str:
    normal = json.dumps([path, fields], sort_keys=True, separators=(",", ":"))  # ASCII: a lone surrogate too
    return hashlib.sha256(normal.encode()).hexdigest()
