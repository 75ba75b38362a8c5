"""A worker: `python -m tokenmill.distributed.worker`, started by rank 0's MultiprocExecutor (or
a node's launcher) with a pickled WorkerSpec on standard input. It joins the ranks' groups, loads
its part of the model, builds its runner with rank 0's pool size, and then makes every call rank 0
sends until told to stop; the last pipeline stage's first rank sends rank 0 each step's output.
If rank 0 goes away, the next receive fails and the worker ends."""

from __future__ import annotations

import logging
import os
import pickle
import sys

import torch

from tokenmill.distributed.executor import RunnerCall, WorkerSpec, for_rank, threads_per_rank
from tokenmill.distributed.group import REPLIES, connect
from tokenmill.log import configure_logging
from tokenmill.model.loader import load_model
from tokenmill.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def run(spec: WorkerSpec) -> None:
    config, parallel = for_rank(spec.config, spec.rank), spec.config.parallel
    torch.set_num_threads(threads_per_rank(len(parallel.local_ranks)))
    world, tp, pp = connect(spec.rank, parallel, spec.master_addr, spec.master_port, config.model.device)
    loaded = load_model(config.model, tp, pp)
    init: RunnerCall = world.recv_object(0)
    runner = ModelRunner(loaded, config.model, config.cache, config.lora, num_blocks=init.args[0])
    reports_outputs = pp.is_last and tp.rank == 0  # and rank 0 is not on the last stage
    while True:
        call: RunnerCall = world.recv_object(0)
        if call.method is None:
            world.wait_sent()
            return
        result = getattr(runner, call.method)(*call.args)
        if call.reply:
            world.send_object(result, 0, REPLIES)
        elif call.method == "execute" and reports_outputs:
            world.send_object(result, 0)


def main() -> int:
    configure_logging(logging.WARNING)
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())
    try:
        run(spec)
    except Exception:
        logger.exception("worker %d (pid %d) stopped", spec.rank, os.getpid())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
