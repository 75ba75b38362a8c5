"""Executors: how the engine core reaches the model runner of every rank.

With one rank the runner lives in the engine's process and a call is a call. Split over ranks,
the engine's process is rank 0 and starts a worker process for each other rank
(`python -m tokenmill.distributed.worker`); every rank loads its part of the model, and rank 0
sends each call (a `SchedulerOutput` to execute, mostly) to every other rank before making it
itself. The same calls on the same data keep every rank's copy of the batch alike.

- Tensor parallelism: the runners' collectives inside a step (all-reduces, the logits'
  all-gather) line up, and every rank of the last stage samples the same tokens from the same
  gathered logits.
- Pipeline parallelism: rank 0 runs the first stage's layers and sends their output on; the last
  stage samples and sends rank 0 the step's output. Steps are submitted and their outputs taken
  in order, up to `pipeline_depth` of them in flight (one per stage), so that while a later
  stage works on one micro-batch, rank 0 already runs the next one's first layers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import subprocess
import sys
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tokenmill.config import EngineConfig
from tokenmill.distributed.group import REPLIES, PipelineParallel, TensorParallel, connect
from tokenmill.engine.messages import RunnerOutput, SchedulerOutput
from tokenmill.engine.stats import RankStats
from tokenmill.model.loader import LoadedModel, load_model
from tokenmill.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


class WorkerDiedError(RuntimeError):
    """A worker process is gone: the engine cannot run another step."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process reads on its standard input to join the engine."""

    config: EngineConfig
    rank: int
    master_addr: str
    master_port: int


@dataclass(frozen=True)
class RunnerCall:
    """A call every rank makes on its ModelRunner; `method` None ends the workers. reply: every
    worker sends rank 0 its result."""

    method: str | None
    args: tuple = ()
    reply: bool = False


class Executor:
    """One rank: the runner in this process."""

    pipeline_depth = 1  # the steps that may be in flight at once

    def __init__(self, config: EngineConfig, tp: TensorParallel = TensorParallel(),
                 pp: PipelineParallel = PipelineParallel()) -> None:  # fmt: skip
        self.loaded = load_model(config.model, tp, pp)
        self.runner = ModelRunner(self.loaded, config.model, config.cache, config.lora)
        self._outputs: deque[RunnerOutput | None] = deque()  # submitted steps', oldest first

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.runner, method)(*args)

    def rank_stats(self) -> list[RankStats]:
        """Every rank's counters, rank 0's first."""
        return [self.runner.rank_stats()]

    def submit(self, sched: SchedulerOutput) -> None:
        """Starts a step; its output is taken, in order, by take_output."""
        self._outputs.append(self.runner.execute(sched))

    def take_output(self) -> RunnerOutput:
        """The oldest submitted step's output."""
        return self._outputs.popleft()

    def check_workers(self) -> None:
        """Raises WorkerDiedError if a worker process has exited (one rank: none can)."""

    def shutdown(self) -> None:
        pass


class MultiprocExecutor(Executor):
    """Rank 0 of an engine split over ranks, with a worker process for each other rank."""

    def __init__(self, config: EngineConfig) -> None:
        parallel = self._parallel = config.parallel
        port = parallel.master_port or _free_port(parallel.master_addr)
        self._workers = [_start_worker(WorkerSpec(config, rank, parallel.master_addr, port))
                         for rank in parallel.local_ranks[1:]]  # the other nodes start their own  # fmt: skip
        self._stop = weakref.finalize(self, _stop_workers, self._workers)
        torch.set_num_threads(threads_per_rank(len(parallel.local_ranks)))  # the ranks here share its cores
        self.pipeline_depth = parallel.pipeline_parallel_size
        self._last_stage_rank = (parallel.pipeline_parallel_size - 1) * parallel.tensor_parallel_size
        try:
            config = for_rank(config, 0)
            self.ranks, tp, pp = connect(0, parallel, parallel.master_addr, port, config.model.device)
            super().__init__(config, tp, pp)
            # the pool's size is rank 0's: a budget from free memory may differ between processes
            self._send(RunnerCall("__init__", (self.runner.num_blocks,)))
        except BaseException:
            for process in self._workers:  # they fail alike, or wait for a rank 0 that is gone
                process.kill()
            self._stop()
            raise
        logger.info("%d ranks over %s: tensor parallel %d x pipeline parallel %d", parallel.world_size,
                    type(self.ranks.group).__name__, parallel.tensor_parallel_size, parallel.pipeline_parallel_size)

    def call(self, method: str, *args: Any) -> Any:
        with self._workers_checked():
            self._send(RunnerCall(method, args))
            return super().call(method, *args)

    def rank_stats(self) -> list[RankStats]:
        """Every rank's counters: the workers answer after the steps already sent to them (none
        once shut down)."""
        if not self._stop.alive:
            return []
        with self._workers_checked():
            self._send(RunnerCall("rank_stats", reply=True))
            mine = self.runner.rank_stats()
            return [mine, *(self.ranks.recv_object(rank, REPLIES) for rank in range(1, self._parallel.world_size))]

    def submit(self, sched: SchedulerOutput) -> None:
        with self._workers_checked():
            self._send(RunnerCall("execute", (sched,)))
            super().submit(sched)

    def take_output(self) -> RunnerOutput:
        with self._workers_checked():
            output = super().take_output()
            return output if output is not None else self.ranks.recv_object(self._last_stage_rank)

    def _send(self, call: RunnerCall) -> None:
        for rank in range(1, self._parallel.world_size):
            self.ranks.send_object(call, rank)

    @contextmanager
    def _workers_checked(self) -> Iterator[None]:
        """Raises WorkerDiedError where a worker is gone, before the block or when it fails."""
        self.check_workers()
        try:
            yield
        except RuntimeError as error:  # a send or collective failed: most likely a rank went away under it
            dead = self._dead_worker(wait_s=2.0)
            if dead is not None:
                raise WorkerDiedError(dead) from error
            raise

    def check_workers(self) -> None:
        dead = self._dead_worker()
        if dead is not None:
            raise WorkerDiedError(dead)

    def shutdown(self) -> None:
        """Tells the workers to stop (if they all still run), then waits for them or ends them."""
        if not self._stop.alive:
            return
        if self._dead_worker() is None:
            try:
                while self._outputs:  # steps still in flight: the last stage waits to hand their outputs over
                    self.take_output()
                self._send(RunnerCall(None))
                self.ranks.wait_sent()
            except RuntimeError:
                pass  # one went away meanwhile: ended below
        else:
            for process in self._workers:
                process.kill()
        self._stop()

    def _dead_worker(self, wait_s: float = 0.0) -> str | None:
        """What ended the first worker found exited (waiting up to wait_s for each), or None."""
        for rank, process in zip(self._parallel.local_ranks[1:], self._workers):
            try:
                code = process.wait(wait_s) if wait_s else process.poll()
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                return f"worker {rank} (pid {process.pid}) exited with code {code}"
        return None


def for_rank(config: EngineConfig, rank: int) -> EngineConfig:
    """A rank's config: on CUDA each rank of a host has its own device (rank r on the host's GPU
    r mod ranks-per-host), made current for NCCL; on the CPU the config as it is."""
    if config.model.device.type != "cuda":
        return config
    device = torch.device("cuda", rank % len(config.parallel.local_ranks))
    torch.cuda.set_device(device)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, device=device))


def threads_per_rank(ranks_here: int) -> int:
    return max(1, (os.cpu_count() or 1) // ranks_here)


def run_node(config: EngineConfig) -> int:
    """A node other than 0 of a multi-host engine: runs its ranks' workers until they end (rank 0
    tells them to, or goes away); returns the first non-zero exit code, else 0."""
    parallel = config.parallel
    workers = [_start_worker(WorkerSpec(config, rank, parallel.master_addr, parallel.master_port))
               for rank in parallel.local_ranks]  # fmt: skip
    logger.info("node %d of %d: ranks %s, rendezvous %s:%d", parallel.node_rank, parallel.nnodes,
                list(parallel.local_ranks), parallel.master_addr, parallel.master_port)
    try:
        codes = [process.wait() for process in workers]
    finally:
        _stop_workers(workers)
    return next((code for code in codes if code), 0)


def make_executor(config: EngineConfig) -> Executor:
    return MultiprocExecutor(config) if config.parallel.world_size > 1 else Executor(config)


def _start_worker(spec: WorkerSpec) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "tokenmill.distributed.worker"], stdin=subprocess.PIPE)
    process.stdin.write(pickle.dumps(spec))
    process.stdin.close()
    return process


def _stop_workers(workers: list[subprocess.Popen]) -> None:
    """Waits a moment for workers (told to stop, or losing rank 0's connection), then ends any still running."""
    for process in workers:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
