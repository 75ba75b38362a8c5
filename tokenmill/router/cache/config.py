"""The router's response caches: off unless a deployment names them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CACHE_MODES = ("exact", "semantic")


@dataclass(frozen=True)
class ResponseCacheConfig:
    modes: tuple[str, ...] = ()  # of CACHE_MODES; none: no cache
    opt_in: bool = False  # only requests that ask (the x-tokenmill-cache header) are cached
    ttl_s: float = 3600.0
    max_entries: int = 10_000  # answers in memory, and questions in the semantic index
    file: Path | None = None  # the in-memory store saved here at shutdown and read back at start
    redis_url: str | None = None  # a shared store instead of memory, e.g. redis://localhost:6379/0
    semantic_threshold: float = 0.94  # the cosine similarity at which another question counts as this one

    def __post_init__(self) -> None:
        unknown = set(self.modes) - set(CACHE_MODES)
        if unknown:
            raise ValueError(f"cache modes are {', '.join(CACHE_MODES)}; got {', '.join(sorted(unknown))}")
        if self.file is not None and self.redis_url is not None:
            raise ValueError("the cache is kept either in a file or in Redis, not both")
        if not 0.0 < self.semantic_threshold <= 1.0:
            raise ValueError(f"the semantic threshold is a cosine similarity in (0, 1]; got {self.semantic_threshold}")
