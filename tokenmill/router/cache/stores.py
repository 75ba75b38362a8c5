"""Where cached answers live: in the router's memory (optionally saved to a file across restarts),
or in Redis, which several routers share. Each entry is a whole response body under its exact key,
and expires after the TTL."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


class ResponseStore(Protocol):
    async def check(self) -> None: ...  # at the router's start: a store it cannot reach fails it then

    async def get(self, key: str) -> dict | None: ...

    async def put(self, key: str, response: dict) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """An LRU of at most max_entries answers, each kept ttl_s seconds; saved to `path` at close and
    read back at start, when a path is given."""

    def __init__(self, ttl_s: float, max_entries: int, path: Path | None = None) -> None:
        self.ttl_s, self.max_entries, self.path = ttl_s, max_entries, path
        self._entries: OrderedDict[str, tuple[float, dict]] = OrderedDict()  # key: (expiry as wall time, body)
        if path is not None and path.exists():
            self._load(path)

    async def check(self) -> None:
        pass  # in this process: always there

    async def get(self, key: str) -> dict | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.time():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def put(self, key: str, response: dict) -> None:
        self._entries[key] = (time.time() + self.ttl_s, response)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        if self.path is None:
            return
        now = time.time()
        live = [[key, expiry, body] for key, (expiry, body) in self._entries.items() if expiry > now]
        partial = self.path.with_suffix(self.path.suffix + ".partial")
        partial.write_text(json.dumps(live))
        partial.replace(self.path)  # whole or not at all

    def _load(self, path: Path) -> None:
        try:
            entries = json.loads(path.read_text())
            for key, expiry, body in entries[-self.max_entries :]:
                if expiry > time.time():
                    self._entries[key] = (expiry, body)
        except (ValueError, TypeError) as exc:  # a damaged file starts an empty cache, not a failed router
            logger.warning("the response cache file %s is unreadable, starting empty: %r", path, exc)


class RedisStore:
    """Entries in Redis under `prefix` + key, with Redis's own expiry; its maxmemory policy bounds the size."""

    def __init__(self, url: str, ttl_s: float, prefix: str = "tokenmill:response:") -> None:
        import redis.asyncio

        self.client, self.ttl_ms, self.prefix = redis.asyncio.Redis.from_url(url), max(1, int(ttl_s * 1000)), prefix

    async def check(self) -> None:
        await self.client.ping()  # a wrong address fails the router's start, not its first request

    async def get(self, key: str) -> dict | None:
        raw = await self.client.get(self.prefix + key)
        return None if raw is None else json.loads(raw)

    async def put(self, key: str, response: dict) -> None:
        await self.client.set(self.prefix + key, json.dumps(response), px=self.ttl_ms)

    async def close(self) -> None:
        await self.client.aclose()
