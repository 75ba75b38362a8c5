"""The router's settings: its backends, how it picks one, and when a backend counts as down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenmill.router.cache.config import ResponseCacheConfig
from tokenmill.router.cascade import CascadeConfig

POLICIES = ("round_robin", "least_loaded", "prefix_aware", "model_aware", "session")


@dataclass(frozen=True)
class RouterConfig:
    backends: tuple[str, ...] = ()  # base URLs, without /v1
    backends_file: Path | None = None  # more, one URL a line, re-read at every health check
    policy: str = "round_robin"
    api_key: str | None = None  # clients must send it; it is passed on to the backends
    health_interval_s: float = 5.0  # how often each backend's /health and /v1/models are read
    request_timeout_s: float = 600.0
    # prefix_aware, as SGLang's cache-aware router: the longest cached match wins unless the
    # in-flight counts differ by more than abs and by more than rel times; a match shorter than
    # cache_threshold of the prompt counts as none (the least loaded backend takes it).
    balance_abs_threshold: int = 8
    balance_rel_threshold: float = 1.5
    cache_threshold: float = 0.3
    session_header: str = "x-session-id"  # session: requests with one value (or one `user`) share a backend
    cache: ResponseCacheConfig = field(default_factory=ResponseCacheConfig)
    cascade: CascadeConfig | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {self.policy!r}")
        if not self.backends and self.backends_file is None:
            raise ValueError("the router needs backends: --backend URL (repeated) or --backends-file")
