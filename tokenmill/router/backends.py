"""The router's backends: their health, the models they serve, and what each has in flight.

A backend whose request fails at the transport (or answers 5xx before its first byte) is taken
out at once; the health check brings it back when its /health answers 200 again. The check also
reads each backend's /v1/models (LoRA adapters included), which model-aware routing filters on,
and re-reads the backends file, so backends can be added and removed while the router runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
    tokens_in_flight: int = 0  # their estimated prompt and output tokens (router/policies.py)
    requests: int = 0
    taken_out_at: float = 0.0  # when a request last found it down: checks begun before do not bring it back

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
        backend.healthy, backend.taken_out_at = False, time.monotonic()

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
            try:
                await self.check_all()
            except Exception:  # a bad backends file, say: the checks go on, the next one reads it again
                logger.exception("health check failed")

    async def _check(self, backend: Backend) -> None:
        headers = {} if self.config.api_key is None else {"Authorization": f"Bearer {self.config.api_key}"}
        started = time.monotonic()
        try:
            health = await self.client.get(f"{backend.url}/health", timeout=5)
            answer = await self.client.get(f"{backend.url}/v1/models", headers=headers, timeout=5)
            healthy = health.status_code == 200 and answer.status_code == 200
            models = frozenset(m["id"] for m in answer.json()["data"]) if healthy else backend.models
        except Exception as exc:  # unreachable, or an answer that is not a model list: down until it is
            logger.debug("backend %s: %r", backend.url, exc)
            healthy, models = False, backend.models
        if healthy and backend.taken_out_at > started:
            return  # a request found it down while this check ran
        if healthy and not backend.healthy:
            logger.info("backend %s is up: %s", backend.url, ", ".join(sorted(models)))
        elif not healthy and backend.healthy:
            logger.warning("backend %s failed its health check", backend.url)
        backend.healthy, backend.models = healthy, models

    def _urls(self) -> list[str]:
        urls = list(self.config.backends)
        if self.config.backends_file is not None and self.config.backends_file.is_file():
            lines = (line.strip() for line in self.config.backends_file.read_text().splitlines())
            urls += [line for line in lines if line and not line.startswith("#")]
        return [url.rstrip("/") for url in dict.fromkeys(urls)]
