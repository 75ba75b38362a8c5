"""The router's /metrics: each backend's requests by status, latency, retries, health and load."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tokenmill.router.backends import BackendPool
from tokenmill.router.cascade import CascadeOutcome


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tokenmill_router:requests", "Requests sent to each backend, by answer status",
                                ["backend", "status"], registry=self.registry)
        self.latency = Histogram("tokenmill_router:request_latency_seconds", "Each backend's time to the end of "
                                 "its answer", ["backend"], registry=self.registry)
        self.retries = Counter("tokenmill_router:retries", "Requests sent again to another backend after one "
                               "failed before its first byte", registry=self.registry)
        self.cache_lookups = Counter("tokenmill_router:cache_lookups", "Cacheable requests, by what the response "
                                     "cache answered: exact, semantic or miss", ["result"], registry=self.registry)
        self.cache_stores = Counter("tokenmill_router:cache_stores", "Answers kept by the response cache",
                                    registry=self.registry)
        self.cascade_requests = Counter("tokenmill_router:cascade_requests", "Requests for the cascade, by the "
                                        "model that answered: small, or large (escalated)", ["answered_by"],
                                        registry=self.registry)  # fmt: skip
        self.cascade_small_tokens = Counter("tokenmill_router:cascade_small_tokens", "Prompt and completion "
                                            "tokens of the small model's answers, by what became of them: used "
                                            "(the large model's tokens saved) or discarded (escalated)",
                                            ["outcome"], registry=self.registry)  # fmt: skip
        self.healthy = Gauge("tokenmill_router:backend_healthy", "1 while a backend takes requests",
                             ["backend"], registry=self.registry)
        self.in_flight = Gauge("tokenmill_router:backend_in_flight", "Requests in flight at each backend",
                               ["backend"], registry=self.registry)
        self.tokens_in_flight = Gauge("tokenmill_router:backend_tokens_in_flight", "Estimated tokens in flight "
                                      "at each backend: prompts not yet answered, outputs not yet ended",
                                      ["backend"], registry=self.registry)  # fmt: skip

    def count_cascade(self, outcome: CascadeOutcome) -> None:
        self.cascade_requests.labels(outcome.answered_by).inc()
        used = outcome.answered_by == "small"
        self.cascade_small_tokens.labels("used" if used else "discarded").inc(outcome.small_tokens)

    def render(self, pool: BackendPool) -> bytes:
        for backend in pool.backends.values():
            self.healthy.labels(backend.url).set(int(backend.healthy))
            self.in_flight.labels(backend.url).set(backend.in_flight)
            self.tokens_in_flight.labels(backend.url).set(backend.tokens_in_flight)
        return generate_latest(self.registry)
