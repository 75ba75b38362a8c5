"""ServerConfig: what `tokenmill serve` listens on and how it protects the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

API_KEY_ENV = "TOKENMILL_API_KEY"  # the API key, when --api-key is not given


@dataclass(frozen=True)
class ServerConfig:
    served_model_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None: no authentication
    max_queued_requests: int = 256  # admitted but not yet producing tokens; past it, 429
    max_queued_tokens: int = 262_144  # prompt tokens of those requests
    retry_after_s: int = 1  # the Retry-After a 429 carries
    request_timeout_s: float = 600.0
    max_request_bytes: int = 4 << 20
    max_n: int = 128  # samples one request may ask for (n, best_of), as OpenAI's limit; past it, 400
    drain_timeout_s: float = 60.0  # SIGTERM: how long in-flight requests may take to finish
    lora_modules: dict[str, str] = field(default_factory=dict)  # adapter name -> PEFT folder, served at start
    max_engine_restarts: int = 3  # a core that exits is replaced this many times; then the server exits (code 1)
    allowed_origins: tuple[str, ...] = ()  # browser origins CORS lets call the API; none: closed
    api_key_on_metrics: bool = False  # /metrics needs the API key too

    def __post_init__(self) -> None:
        for name in ("max_queued_requests", "max_queued_tokens", "max_request_bytes", "max_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_engine_restarts < 0:
            raise ValueError(f"max_engine_restarts must be >= 0, got {self.max_engine_restarts}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
