"""The router's backends: their health, the models they serve, and what each has in flight.

A backend whose request fails at the transport (or answers 5xx before its first byte) is taken
out at once; the health check brings it back when its /health answers 200 again. The check also
reads each backend's /v1/models (LoRA adapters included), which model-aware routing filters on,
and re-reads the backends file, so backends can be added and removed while the router runs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import httpx

from tokenmill.router.config import RouterConfig

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Backend:
    url: str
    healthy: bool = False  # until its first health check
    models: frozenset[str] = frozenset()
    in_flight: int = 0  # requests the router has sent it and not seen end
    requests: int = 0
    errors: int = 0

    def serves(self, model: str | None) -> bool:
        return model is None or not self.models or model in self.models


@dataclass
class BackendPool:
    config: RouterConfig
    client: httpx.AsyncClient
    backends: dict[str, Backend] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for url in self._urls():
            self.backends[url] = Backend(url)

    def candidates(self, model: str | None, exclude: set[Backend] = frozenset()) -> list[Backend]:
        """The healthy backends serving the model, less those excluded (already tried)."""
        return [b for b in self.backends.values() if b.healthy and b.serves(model) and b not in exclude]

    def take_out(self, backend: Backend, reason: str) -> None:
        if backend.healthy:
            logger.warning("backend %s taken out: %s", backend.url, reason)
        backend.healthy = False
        backend.errors += 1

    async def check_all(self) -> None:
        """Re-reads the backends file, then each backend's health and models at once."""
        urls = self._urls()
        for url in urls:
            self.backends.setdefault(url, Backend(url))
        for url in [u for u in self.backends if u not in urls]:
            del self.backends[url]
        await asyncio.gather(*(self._check(b) for b in self.backends.values()))

    async def run_checks(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self.check_all()

    async def _check(self, backend: Backend) -> None:
        headers = {} if self.config.api_key is None else {"Authorization": f"Bearer {self.config.api_key}"}
        try:
            health = await self.client.get(f"{backend.url}/health", timeout=5)
            models = await self.client.get(f"{backend.url}/v1/models", headers=headers, timeout=5)
            healthy = health.status_code == 200 and models.status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy:
            backend.models = frozenset(m["id"] for m in models.json().get("data", []))
        if healthy and not backend.healthy:
            logger.info("backend %s is up: %s", backend.url, ", ".join(sorted(backend.models)))
        elif not healthy and backend.healthy:
            logger.warning("backend %s failed its health check", backend.url)
        backend.healthy = healthy

    def _urls(self) -> list[str]:
        urls = list(self.config.backends)
        if self.config.backends_file is not None and self.config.backends_file.is_file():
            urls += [line.strip() for line in self.config.backends_file.read_text().splitlines()
                     if line.strip() and not line.startswith("#")]  # fmt: skip
        return [url.rstrip("/") for url in dict.fromkeys(urls)]
