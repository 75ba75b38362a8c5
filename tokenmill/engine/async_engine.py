"""AsyncEngine: an engine core process seen from asyncio, as one stream of deltas per request.

The core runs in a child process (as vLLM's engine core does), so HTTP parsing, JSON and SSE
never take the interpreter from the step loop. Requests go in through a multiprocessing queue (a
put never blocks the event loop: a feeder thread writes the pipe); what the core sends back comes
through a pipe that the event loop itself watches, so each step's outputs cost no thread hand-off.
There the output processor turns the core's token ids into text deltas, and a stop string it
finds aborts that sample in the core. The pipe's end of file is the core's exit: every request in
flight then fails at once, and a new core is started in its place (up to max_restarts times; then
`on_gone` is called, and the server exits for its supervisor).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing as mp
from collections.abc import AsyncIterator, Callable

from tokenmill.config import EngineConfig
from tokenmill.log import tokenmill_level
from tokenmill.engine.core import AbortRequest, AddRequest, CoreReady, Shutdown, StepOutputs, run_engine_core
from tokenmill.engine.output_processor import OutputProcessor, RequestDelta
from tokenmill.engine.stats import EngineStats
from tokenmill.lora.request import LoRARequest
from tokenmill.model.tokenizer import Tokenizer
from tokenmill.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_REAP_S = 1.0  # how long to wait for a core whose pipe ended to be reaped, for its exit code


class EngineDeadError(RuntimeError):
    """The engine core process has exited; no request can be served."""


class RequestRejectedError(ValueError):
    """The engine refused a request (`param` names the offending field when one does), or, with
    server_fault, failed it."""

    def __init__(self, param: str | None, message: str, server_fault: bool = False) -> None:
        super().__init__(message)
        self.param, self.server_fault = param, server_fault


class AsyncEngine:
    def __init__(self, config: EngineConfig, tokenizer: Tokenizer,
                 on_step: Callable[[StepOutputs], None] | None = None, max_restarts: int = 0,
                 on_gone: Callable[[], None] | None = None) -> None:  # fmt: skip
        self._config = config
        self._streams: dict[str, asyncio.Queue[RequestDelta | Exception]] = {}
        self._processor = OutputProcessor(tokenizer)
        self._on_step = on_step
        self._restarts_left, self._on_gone = max_restarts, on_gone
        self._ids = itertools.count()
        self._stopping = False
        self._dead = False  # the pipe ended: the core is gone, even before the process is reaped
        self._restarting: asyncio.Future | None = None
        self.stats = EngineStats(0, 0, 0.0, 0)
        self.max_model_len = 0
        self._new_core()

    def _new_core(self) -> None:
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited event loop, threads or torch state
        self._inbox: mp.Queue = ctx.Queue()
        self._outbox, self._core_end = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=run_engine_core, args=(self._config, self._inbox, self._core_end,
                                    tokenmill_level()), name="tokenmill-engine-core", daemon=True)  # fmt: skip

    @property
    def is_alive(self) -> bool:
        return self._process.is_alive() and not (self._stopping or self._dead)

    async def start(self) -> None:
        """Starts the core and returns once its model is loaded."""
        loop = asyncio.get_running_loop()
        self._process.start()
        self._core_end.close()  # the core holds the writing end now: its exit ends the pipe
        ready = await loop.run_in_executor(None, self._wait_ready)
        self.max_model_len = ready.max_model_len
        loop.add_reader(self._outbox.fileno(), self._read)
        self._dead = False

    async def _restart(self) -> None:
        """A new core in place of the one that exited, until the restarts allowed are spent; a core
        that fails to start waits longer before the next try (1 s, 2 s, 4 s, ...)."""
        self.stats = EngineStats(0, 0, 0.0, 0)
        delay = 0.0
        while not self._stopping:
            if self._restarts_left == 0:
                logger.error("the engine core exited and no restart is left: the server stops")
                if self._on_gone is not None:
                    self._on_gone()
                return
            await asyncio.sleep(delay)
            self._restarts_left -= 1
            self._close_core()
            logger.warning("restarting the engine core (%d restarts left)", self._restarts_left)
            try:
                self._new_core()
                await self.start()
            except Exception:  # it died while loading, or could not be started at all
                logger.exception("the new engine core failed to start")
                delay = max(1.0, 2 * delay)
                continue
            logger.warning("the engine core is serving again")
            return

    def _close_core(self) -> None:
        """Releases an exited core's pipe and queue. The queue's reading end goes first: a request
        the feeder thread was writing when the core died would otherwise block it forever on the
        full pipe, and with it the exit."""
        if not self._outbox.closed:
            asyncio.get_running_loop().remove_reader(self._outbox.fileno())
            self._outbox.close()
        self._core_end.close()  # a no-op once start() has handed it over
        self._inbox._reader.close()  # type: ignore[attr-defined]  # multiprocessing has no public way
        self._inbox.close()
        self._inbox.join_thread()

    def _wait_ready(self) -> CoreReady:
        try:
            return self._outbox.recv()
        except (EOFError, OSError):
            raise EngineDeadError(f"the engine core exited while starting (exit code {self._exit_code()})") from None

    def _read(self) -> None:
        """One message from the core, run in the event loop when the pipe is readable (it fires
        again while more are waiting, so streaming to clients goes on between messages)."""
        try:
            out = self._outbox.recv()
        except (EOFError, OSError):
            self._dead = True
            asyncio.get_running_loop().remove_reader(self._outbox.fileno())
            if not self._stopping:
                self._fail_all()
                self._restarting = asyncio.ensure_future(self._restart())
            return
        self._dispatch(out)

    def _dispatch(self, out: StepOutputs) -> None:
        self.stats = out.stats
        for rejected in out.rejected:
            if (stream := self._streams.get(rejected.request_id)) is not None:
                stream.put_nowait(RequestRejectedError(rejected.param, rejected.message, rejected.server_fault))
        for delta in self._processor.process(out.outputs):
            if (stream := self._streams.get(delta.request_id)) is not None:
                stream.put_nowait(delta)
        for request_id, indices in self._processor.take_aborts():
            self._inbox.put(AbortRequest(request_id, tuple(indices)))
        if self._on_step is not None:
            self._on_step(out)

    def _fail_all(self) -> None:
        logger.error("the engine core exited (exit code %s)", self._exit_code())
        for stream in self._streams.values():
            stream.put_nowait(EngineDeadError("the engine core exited"))

    def _exit_code(self) -> int | None:
        self._process.join(_REAP_S)  # the pipe ends as the core exits, a moment before it can be reaped
        return self._process.exitcode

    def new_request_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int = 0,
        cache_salt: str | None = None, lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[RequestDelta]:
        """The request's deltas as the core produces them. Leaving early (an exception, a
        cancelled task, a closed generator) aborts the request in the core and frees its blocks."""
        if not self.is_alive:
            raise EngineDeadError("the engine core is not running")
        stream: asyncio.Queue[RequestDelta | Exception] = asyncio.Queue()
        self._streams[request_id] = stream
        self._processor.add_request(request_id, None, prompt_token_ids, params)
        self._inbox.put(AddRequest(request_id, prompt_token_ids, params, priority, cache_salt, lora_request))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, RequestRejectedError):
                    finished = True  # never admitted: nothing to abort
                if isinstance(item, Exception):
                    raise item
                finished = item.finished
                yield item
        finally:
            del self._streams[request_id]
            self._processor.forget(request_id)
            if not finished and self._process.is_alive():
                self._inbox.put(AbortRequest(request_id))

    async def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._restarting is not None and not self._restarting.done():
            self._process.terminate()  # a core still loading: it has not read its inbox yet
            await asyncio.gather(self._restarting, return_exceptions=True)
        if self._process.is_alive():
            self._inbox.put(Shutdown())
            await asyncio.get_running_loop().run_in_executor(None, self._process.join, timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
        self._close_core()  # release its pipe and semaphore now, not at exit
