"""The router's response caches behind one seam: plan (is this request cached, under which keys),
lookup (a cached answer, exact or semantic), remember (an answer that came back whole).

A request may narrow what the deployment caches with the x-tokenmill-cache header: `off`, or the
modes it wants (`exact`, `semantic`, `on` for all). With opt_in, only requests that send it are cached.
Every answer from the cache says so: the same header (`exact` or `semantic`) and `usage.response_cache`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from fastapi.responses import Response

from tokenmill.router.cache.config import CACHE_MODES, ResponseCacheConfig
from tokenmill.router.cache.keys import SemanticQuery, exact_key, is_deterministic, semantic_query
from tokenmill.router.cache.replay import replay_response
from tokenmill.router.cache.semantic import Embedder, SemanticIndex
from tokenmill.router.cache.stores import MemoryStore, RedisStore, ResponseStore

logger = logging.getLogger(__name__)

CACHE_HEADER = "x-tokenmill-cache"
SIMILARITY_HEADER = "x-tokenmill-cache-similarity"
# What an answer carries that belongs to its one request: not kept (timings), or not cacheable
# (KV blocks parked for a disaggregated decode).
_PER_REQUEST_FIELDS = ("timings", "kv_transfer_params")


@dataclass
class CachePlan:
    key: str
    modes: frozenset[str]
    semantic: SemanticQuery | None = None
    vector: np.ndarray | None = field(default=None, repr=False)  # the question's embedding, once looked up


@dataclass(frozen=True)
class CachedAnswer:
    kind: str  # exact or semantic
    body: dict
    similarity: float = 1.0

    def response(self, request_body: dict) -> Response:
        body = {**self.body, "usage": {**(self.body.get("usage") or {}), "response_cache": self.kind}}
        return replay_response(body, request_body, {CACHE_HEADER: self.kind, SIMILARITY_HEADER: f"{self.similarity:.4f}"})


class ResponseCache:
    def __init__(self, config: ResponseCacheConfig, store: ResponseStore, index: SemanticIndex | None) -> None:
        self.config, self.store, self.index = config, store, index

    @classmethod
    def build(cls, config: ResponseCacheConfig) -> ResponseCache | None:
        if not config.modes:
            return None
        store: ResponseStore = (RedisStore(config.redis_url, config.ttl_s) if config.redis_url is not None
                                else MemoryStore(config.ttl_s, config.max_entries, config.file))  # fmt: skip
        index = None
        if "semantic" in config.modes:
            index = SemanticIndex(Embedder(), config.semantic_threshold, config.max_entries)
        return cls(config, store, index)

    def plan(self, path: str, body: dict, asked: str | None) -> CachePlan | None:
        """How this request is cached; None when it is not: not deterministic, or not asked for."""
        modes = self._modes(asked)
        if not modes or not is_deterministic(body) or body.get("kv_transfer_params") is not None:
            return None
        semantic = semantic_query(path, body) if "semantic" in modes else None
        if "exact" not in modes and semantic is None:
            return None  # semantic only, and not a question it compares: nothing could ever read it
        return CachePlan(exact_key(path, body), modes, semantic)

    def _modes(self, asked: str | None) -> frozenset[str]:
        enabled = frozenset(self.config.modes)
        if asked is None:
            return frozenset() if self.config.opt_in else enabled
        words = {word.strip().lower() for word in asked.split(",")}
        if "off" in words:
            return frozenset()
        return enabled if "on" in words else enabled & words & set(CACHE_MODES)

    async def lookup(self, plan: CachePlan) -> CachedAnswer | None:
        """A cached answer, or None; a store that fails (Redis gone) is a miss, not a failed request."""
        try:
            return await self._lookup(plan)
        except Exception as exc:
            logger.warning("response cache lookup failed, answering without it: %r", exc)
            return None

    async def _lookup(self, plan: CachePlan) -> CachedAnswer | None:
        if "exact" in plan.modes and (body := await self.store.get(plan.key)) is not None:
            return CachedAnswer("exact", body)
        if plan.semantic is None or self.index is None:
            return None
        plan.vector = await self.index.embedder.embed(plan.semantic.text)
        match = self.index.nearest(plan.semantic, plan.vector)
        if match is None:
            return None
        body = await self.store.get(match.exact_key)
        if body is None:  # its answer expired: the question goes too
            self.index.forget(match.label)
            return None
        return CachedAnswer("semantic", body, match.similarity)

    async def remember(self, plan: CachePlan, body: dict) -> bool:
        """Keeps an answer that came back whole (every choice finished); whether it was kept."""
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices or not all(_finished(choice) for choice in choices):
            return False
        try:
            await self.store.put(plan.key, {k: v for k, v in body.items() if k not in _PER_REQUEST_FIELDS})
        except Exception as exc:
            logger.warning("response cache store failed, the answer is not kept: %r", exc)
            return False
        if plan.semantic is not None and plan.vector is not None and self.index is not None:
            self.index.add(plan.semantic, plan.vector, plan.key)
        return True

    async def start(self) -> None:
        await self.store.check()

    async def close(self) -> None:
        await self.store.close()


def _finished(choice: object) -> bool:
    return isinstance(choice, dict) and choice.get("finish_reason") not in (None, "abort")
