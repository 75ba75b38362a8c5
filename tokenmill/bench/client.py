"""Drives an OpenAI-compatible server with streaming chat requests and records when each token came.

Closed loop (`concurrency` requests in flight, the next sent as one ends) or open loop (Poisson
arrivals at `request_rate` per second). Every request asks for exactly its output length
(`max_tokens` with vLLM's `ignore_eos`; servers that do not know the field may stop early, and
the counts recorded are the server's own, from `usage`), except one with a response format: its
grammar ends it, and whether the output follows the format is recorded.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tokenmill.bench.chat_workloads import ChatRequest
from tokenmill.bench.validity import follows_format


@dataclass
class RequestRecord:
    """Seconds on one clock (time.perf_counter), from the level's start."""

    start: float
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)  # each content chunk's arrival
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the server's prefix cache supplied, as it reports them
    output_tokens: int = 0
    error: str | None = None
    text: str = ""  # the generated text (choice 0)
    valid: bool | None = None  # under a response format: the output parses and validates

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first; None for single-token outputs."""
        return (self.end - self.token_times[0]) / (self.output_tokens - 1) if self.output_tokens > 1 else None


@dataclass(frozen=True)
class Target:
    base_url: str  # up to and including /v1
    model: str
    api_key: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


async def _send(client: httpx.AsyncClient, target: Target, request: ChatRequest, clock0: float) -> RequestRecord:
    body = {"model": target.model, "messages": request.messages, "max_tokens": request.output_len,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if request.response_format is not None:
        body["response_format"] = request.response_format
    else:
        body["ignore_eos"] = True
    record = RequestRecord(start=time.perf_counter() - clock0)
    try:
        async with client.stream("POST", f"{target.base_url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread()).decode(errors='replace')[:200]}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if usage := chunk.get("usage"):
                    record.prompt_tokens = usage["prompt_tokens"]
                    record.output_tokens = usage["completion_tokens"]
                    record.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                content = "".join(c.get("delta", {}).get("content") or "" for c in chunk.get("choices", []))
                if content:
                    record.token_times.append(time.perf_counter() - clock0)
                    record.text += content
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    record.end = time.perf_counter() - clock0
    if request.response_format is not None and record.error is None:
        record.valid = follows_format(request.response_format, record.text)
    return record


async def run_level(
    target: Target, requests: list[ChatRequest], concurrency: int | None = None, request_rate: float | None = None,
    seed: int = 0, on_done: Callable[[], None] | None = None,
) -> tuple[float, list[RequestRecord]]:
    """(wall seconds, records in the order of the requests). Exactly one of concurrency or request_rate."""
    if (concurrency is None) == (request_rate is None):
        raise ValueError("give either concurrency or request_rate")
    gate = asyncio.Semaphore(concurrency or len(requests))
    limit = concurrency or len(requests)
    headers = target.headers
    arrivals = _poisson_arrivals(len(requests), request_rate, seed) if request_rate else [0.0] * len(requests)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
                                 timeout=httpx.Timeout(None), headers=headers) as client:
        clock0 = time.perf_counter()

        async def one(request: ChatRequest, arrival: float) -> RequestRecord:
            await asyncio.sleep(max(0.0, arrival - (time.perf_counter() - clock0)))
            async with gate:
                record = await _send(client, target, request, clock0)
            if on_done is not None:
                on_done()
            return record

        records = await asyncio.gather(*(one(r, t) for r, t in zip(requests, arrivals)))
        return time.perf_counter() - clock0, list(records)


def _poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(n):
        times.append(now)
        now += rng.expovariate(rate)
    return times
