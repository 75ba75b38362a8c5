"""The engine core: LLMEngine's step loop in a process of its own, driven by messages.

The serving front end sends requests and aborts in; the core sends back, after every step, what
each touched request gained (only the new text, tokens and logprobs) and the engine's load. The
loop blocks on its inbox while idle and drains it between steps while busy, so no step waits
for the front end and the front end never waits for a step.
"""

from __future__ import annotations

import logging
import multiprocessing.queues
import os
import queue
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenmill.config import EngineConfig
from tokenmill.outputs import Logprob, RequestMetrics, RequestOutput
from tokenmill.sampling_params import SamplingParams

if TYPE_CHECKING:
    from tokenmill.engine.engine import LLMEngine

logger = logging.getLogger(__name__)

_IDLE_POLL_S = 1.0  # how often an idle core checks that its front end is still there


# ---- messages in ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0
    cache_salt: str | None = None


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class Shutdown:
    pass


# ---- messages out --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoreReady:
    max_model_len: int


@dataclass
class CompletionDelta:
    index: int
    text: str  # new text since the last delta
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None
    stop_reason: int | str | None


@dataclass
class RequestDelta:
    request_id: str
    completions: list[CompletionDelta]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int


@dataclass(frozen=True)
class RequestRejected:
    request_id: str
    param: str | None
    message: str


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of blocks in use
    num_preemptions: int  # since start
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache, since start
    prefix_cache_hits: int = 0  # of those, tokens found
    speculative_method: str | None = None  # speculative decoding's proposer, if on
    spec_draft_tokens: int = 0  # tokens it proposed, since start
    spec_accepted_tokens: int = 0  # of those, tokens the model accepted


@dataclass
class StepOutputs:
    deltas: list[RequestDelta]
    stats: EngineStats
    rejected: list[RequestRejected] = field(default_factory=list)


# ---- the core ------------------------------------------------------------------------------------


class DeltaTracker:
    """Turns the engine's cumulative outputs into what is new since each request's last report."""

    def __init__(self) -> None:
        self._sent: dict[str, list[tuple[int, int]]] = {}  # request id -> per sample (chars, tokens)

    def delta(self, out: RequestOutput) -> RequestDelta:
        sent = self._sent.setdefault(out.request_id, [(0, 0)] * len(out.outputs))
        completions = []
        for c in out.outputs:
            chars, tokens = sent[c.index]
            completions.append(CompletionDelta(
                c.index, c.text[chars:], c.token_ids[tokens:], c.logprobs[tokens:] if c.logprobs is not None else None,
                c.finish_reason, c.stop_reason,
            ))  # fmt: skip
            sent[c.index] = (len(c.text), len(c.token_ids))
        if out.finished:
            del self._sent[out.request_id]
        return RequestDelta(out.request_id, completions, out.finished, out.metrics, out.num_cached_tokens)

    def forget(self, request_id: str) -> None:
        self._sent.pop(request_id, None)


def run_engine_core(
    config: EngineConfig, inbox: multiprocessing.queues.Queue, outbox: multiprocessing.queues.Queue
) -> None:
    """The core process's main: builds the engine, reports ready, then serves until Shutdown."""
    from tokenmill.engine.engine import LLMEngine

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the front end, which sends Shutdown
    parent = os.getppid()
    engine = LLMEngine(config)
    outbox.put(CoreReady(engine.max_model_len))
    tracker = DeltaTracker()
    while True:
        messages: list[AddRequest | AbortRequest | Shutdown] = []
        try:
            idle = not engine.has_unfinished_requests()
            messages.append(inbox.get(timeout=_IDLE_POLL_S) if idle else inbox.get_nowait())
            while True:
                messages.append(inbox.get_nowait())
        except queue.Empty:
            pass
        if any(isinstance(m, Shutdown) for m in messages) or os.getppid() != parent:
            return  # asked to, or orphaned: the front end is gone
        rejected = [r for m in messages if (r := _handle(engine, tracker, m)) is not None]
        deltas = [tracker.delta(out) for out in engine.step()] if engine.has_unfinished_requests() else []
        if deltas or messages:
            outbox.put(StepOutputs(deltas, _stats(engine), rejected))


def _handle(engine: LLMEngine, tracker: DeltaTracker, message: AddRequest | AbortRequest) -> RequestRejected | None:
    from tokenmill.engine.engine import InvalidRequestError

    if isinstance(message, AbortRequest):
        engine.abort_request(message.request_id)
        tracker.forget(message.request_id)
        return None
    try:
        engine.add_request(message.prompt_token_ids, message.params, message.request_id, message.priority,
                           message.cache_salt)
    except InvalidRequestError as exc:
        return RequestRejected(message.request_id, exc.param, str(exc))
    except Exception as exc:  # whatever else a request can provoke, it must not stop the core
        logger.exception("request %s refused", message.request_id)
        return RequestRejected(message.request_id, None, f"the engine could not take the request: {exc}")
    return None


def _stats(engine: LLMEngine) -> EngineStats:
    scheduler, cache, speculator = engine.scheduler, engine.block_manager.prefix_cache, engine.speculator
    return EngineStats(
        len(scheduler.running), len(scheduler.waiting), engine.block_manager.usage, scheduler.num_preemptions,
        cache.num_queried_tokens if cache is not None else 0, cache.num_hit_tokens if cache is not None else 0,
        speculator.config.method if speculator is not None else None,
        speculator.stats.num_proposed if speculator is not None else 0,
        speculator.stats.num_accepted if speculator is not None else 0,
    )
