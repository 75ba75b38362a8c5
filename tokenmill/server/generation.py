"""One API request through the engine: admission, the delta stream, timeout, metrics and timings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from tokenmill.engine.async_engine import AsyncEngine, EngineDeadError, RequestRejectedError
from tokenmill.engine.output_processor import RequestDelta
from tokenmill.kv_transfer.params import KVTransferParams
from tokenmill.lora.request import LoRARequest
from tokenmill.outputs import Logprob, RequestMetrics
from tokenmill.sampling_params import SamplingParams
from tokenmill.server.adapters import AdapterRegistry
from tokenmill.server.admission import AdmissionControl, QueueFullError, Ticket
from tokenmill.server.config import ServerConfig
from tokenmill.server.errors import APIError, bad_request
from tokenmill.server.metrics import ServerMetrics


@dataclass
class ServerState:
    """What every route shares; built once per server."""

    engine: AsyncEngine
    config: ServerConfig
    metrics: ServerMetrics
    admission: AdmissionControl
    adapters: AdapterRegistry


@dataclass
class Choice:
    """One sample's text so far, as the response builds it up."""

    text: str = ""
    num_tokens: int = 0
    logprobs: list[tuple[int, dict[int, Logprob]]] = field(default_factory=list)  # (token id, top-n)
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class RequestRun:
    def __init__(self, state: ServerState, prompt_token_ids: list[int], params: SamplingParams, priority: int,
                 kind: str, cache_salt: str | None = None, lora: LoRARequest | None = None) -> None:  # fmt: skip
        self.state = state
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.priority = priority
        self.cache_salt = cache_salt
        self.lora = lora
        self.num_cached_tokens = 0
        self.kv_transfer_params: KVTransferParams | None = None  # a prefill instance's: where the prompt's KV waits
        self.request_id = state.engine.new_request_id(kind)
        self.created = int(time.time())
        self.arrival = time.monotonic()
        self.first_token: float | None = None
        self._last_token = 0.0
        self.finished: float | None = None
        self.engine_metrics: RequestMetrics | None = None
        self.choices = [Choice() for _ in range(params.n)]
        self._ticket: Ticket | None = None

    def admit(self) -> None:
        """Takes a place in the server's queue, or refuses the request with a 429."""
        state = self.state
        try:
            self._ticket = state.admission.admit(len(self.prompt_token_ids))
        except QueueFullError as exc:
            state.metrics.observe_rejected("queue_full")
            raise APIError(429, str(exc), "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(state.config.retry_after_s)}) from exc

    async def deltas(self) -> AsyncIterator[RequestDelta]:
        """The engine's deltas, each already folded into self.choices; admit() first."""
        state, ticket = self.state, self._ticket
        assert ticket is not None, "admit() first"
        deadline = self.arrival + state.config.request_timeout_s
        try:
            stream = state.engine.generate(self.request_id, self.prompt_token_ids, self.params, self.priority,
                                           self.cache_salt, self.lora)
            async with aclosing(stream):
                while True:
                    try:
                        # no task per token, unlike 3.11's wait_for
                        async with asyncio.timeout(deadline - time.monotonic()):
                            delta = await anext(stream)
                    except StopAsyncIteration:
                        return
                    ticket.release()
                    self._fold(delta)
                    yield delta
        except TimeoutError as exc:
            state.metrics.observe_rejected("timeout")
            raise APIError(408, f"the request did not finish within {state.config.request_timeout_s:g} s",
                           "timeout_error", code="request_timeout") from exc
        except RequestRejectedError as exc:
            if exc.server_fault:
                state.metrics.observe_rejected("failed")
                raise APIError(500, str(exc), "server_error", code="internal_error") from exc
            state.metrics.observe_rejected("invalid")
            raise bad_request(str(exc), exc.param) from exc
        except EngineDeadError as exc:
            raise APIError(503, str(exc), "server_error", code="engine_dead") from exc
        finally:
            ticket.release()

    def _fold(self, delta: RequestDelta) -> None:
        now = time.monotonic()
        self.num_cached_tokens = delta.num_cached_tokens
        num_tokens = 0
        for c in delta.completions:
            choice = self.choices[c.index]
            choice.text += c.text
            choice.num_tokens += len(c.token_ids)
            if c.logprobs is not None:
                choice.logprobs.extend(zip(c.token_ids, c.logprobs))
            choice.finish_reason, choice.stop_reason = c.finish_reason, c.stop_reason
            num_tokens += len(c.token_ids)
        metrics = self.state.metrics
        if num_tokens:
            metrics.observe_tokens(num_tokens, None if self.first_token is None else now - self._last_token)
            self._last_token = now
            self.first_token = self.first_token or now
        if delta.finished:
            self.finished, self.engine_metrics = now, delta.metrics
            self.kv_transfer_params = delta.kv_transfer_params
            metrics.observe_finished(delta.metrics, self.ttft_s, now - self.arrival, len(self.prompt_token_ids),
                                     [c.finish_reason or "abort" for c in self.choices])

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    def usage(self) -> dict:
        completion = sum(c.num_tokens for c in self.choices)
        prompt = len(self.prompt_token_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": self.num_cached_tokens}}

    def kv_transfer_field(self) -> dict:
        """{"kv_transfer_params": ...} where the prompt's KV was parked for a decode instance, else {}."""
        return {} if self.kv_transfer_params is None else {"kv_transfer_params": self.kv_transfer_params.to_json()}

    def timings(self) -> dict:
        """Milliseconds: queue (arrival to first scheduled), time to first token, decode, end to end."""
        engine, ms = self.engine_metrics, 1000.0
        queue = None
        if engine is not None and engine.first_scheduled_time is not None:
            queue = round((engine.first_scheduled_time - engine.arrival_time) * ms, 2)
        ttft = None if self.ttft_s is None else round(self.ttft_s * ms, 2)
        decode = None
        if self.first_token is not None and self.finished is not None:
            decode = round((self.finished - self.first_token) * ms, 2)
        e2e = None if self.finished is None else round((self.finished - self.arrival) * ms, 2)
        return {"queue_ms": queue, "ttft_ms": ttft, "decode_ms": decode, "e2e_ms": e2e}
