"""A tensor-parallel worker: `python -m tokenmill.distributed.worker`, started by rank 0's
MultiprocExecutor with a pickled WorkerSpec on standard input. It joins the ranks' group, loads
its part of the model, builds its runner with rank 0's pool size, and then makes every call rank 0
broadcasts until told to stop. If rank 0 goes away, the next collective fails and the worker ends."""

from __future__ import annotations

import logging
import os
import pickle
import sys

import torch

from tokenmill.distributed.executor import RunnerCall, WorkerSpec, for_rank, threads_per_rank
from tokenmill.distributed.group import RankGroup, TensorParallel
from tokenmill.log import configure_logging
from tokenmill.model.loader import load_model
from tokenmill.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def run(spec: WorkerSpec) -> None:
    config, parallel = for_rank(spec.config, spec.rank), spec.config.parallel
    torch.set_num_threads(threads_per_rank(len(parallel.local_ranks)))
    ranks = RankGroup.connect(spec.rank, parallel.world_size, spec.master_addr, spec.master_port,
                              config.model.device)  # fmt: skip
    loaded = load_model(config.model, TensorParallel(ranks))
    init = ranks.broadcast_object()
    runner = ModelRunner(loaded, config.model, config.cache, config.lora, num_blocks=init.args[0])
    while True:
        call: RunnerCall = ranks.broadcast_object()
        if call.method is None:
            return
        getattr(runner, call.method)(*call.args)


def main() -> int:
    configure_logging(logging.WARNING)
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())
    try:
        run(spec)
    except Exception:
        logger.exception("tensor-parallel worker %d (pid %d) stopped", spec.rank, os.getpid())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
