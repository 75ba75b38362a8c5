"""The engine core: LLMEngine's step loop in a process of its own, driven by messages.

The serving front end sends requests and aborts in; the core sends back, after every step, what
each touched request gained (only the new token ids and logprobs: the front end makes the text)
and the engine's load. The loop blocks on its inbox while idle and drains it between steps while
busy. Outputs go into a pipe whose buffer the OS keeps, so a step waits for the front end only
when the front end has fallen a whole buffer behind, and the front end never waits for a step.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import multiprocessing.queues
import os
import queue
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenmill.config import EngineConfig
from tokenmill.engine.messages import EngineOutput
from tokenmill.engine.stats import EngineStats
from tokenmill.log import configure_logging
from tokenmill.lora.request import LoRARequest
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
    lora_request: LoRARequest | None = None


@dataclass(frozen=True)
class AbortRequest:
    request_id: str
    indices: tuple[int, ...] | None = None  # the samples to end (a stop string ended them); None: all


@dataclass(frozen=True)
class Shutdown:
    pass


# ---- messages out --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoreReady:
    max_model_len: int


@dataclass(frozen=True)
class RequestRejected:
    request_id: str
    param: str | None
    message: str
    server_fault: bool = False  # the engine failed it (a 500), rather than refusing what it asked (a 400)


@dataclass
class StepOutputs:
    outputs: list[EngineOutput]
    stats: EngineStats
    rejected: list[RequestRejected] = field(default_factory=list)


# ---- the core ------------------------------------------------------------------------------------


def run_engine_core(
    config: EngineConfig, inbox: multiprocessing.queues.Queue, outbox: multiprocessing.connection.Connection,
    log_level: int = logging.WARNING,
) -> None:
    """The core process's main: builds the engine, warms it up, reports ready, then serves until Shutdown."""
    from tokenmill.engine.engine import LLMEngine

    configure_logging(log_level)  # a spawned process starts with no handlers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the front end, which sends Shutdown
    parent = os.getppid()
    engine = LLMEngine(config)
    try:
        engine.warm_up()  # before ready: the first requests run as fast as the rest
        outbox.send(CoreReady(engine.max_model_len))
        _serve(engine, inbox, outbox, parent)
    finally:
        engine.shutdown()


def _serve(engine: LLMEngine, inbox: multiprocessing.queues.Queue, outbox: multiprocessing.connection.Connection,
           parent: int) -> None:
    from tokenmill.engine.engine import RequestFailedError

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
        engine.check_workers()  # a dead worker ends the core, which the front end sees at once
        rejected = [r for m in messages if (r := _handle(engine, m)) is not None]
        free_blocks = engine.kv_manager.num_free_blocks
        outputs = engine.step() if engine.has_unfinished_requests() else []
        rejected += [RequestRejected(request_id, exc.param, str(exc), isinstance(exc, RequestFailedError))
                     for request_id, exc in engine.take_rejected()]  # fmt: skip
        freed = engine.kv_manager.num_free_blocks != free_blocks  # blocks a decode instance pulled, say
        if outputs or messages or rejected or freed:
            try:
                outbox.send(StepOutputs(outputs, engine.stats(), rejected))
            except BrokenPipeError:
                return  # the front end is gone


def _handle(engine: LLMEngine, message: AddRequest | AbortRequest) -> RequestRejected | None:
    from tokenmill.engine.engine import InvalidRequestError

    if isinstance(message, AbortRequest):
        engine.abort_request(message.request_id, message.indices)
        return None
    try:
        engine.add_request(message.prompt_token_ids, message.params, message.request_id, message.priority,
                           message.cache_salt, lora_request=message.lora_request)
    except InvalidRequestError as exc:
        return RequestRejected(message.request_id, exc.param, str(exc))
    except Exception as exc:  # whatever else a request can provoke, it must not stop the core
        logger.exception("request %s refused", message.request_id)
        return RequestRejected(message.request_id, None, f"the engine could not take the request "
                               f"({type(exc).__name__}); the server's log has the details", server_fault=True)
    return None
