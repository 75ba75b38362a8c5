"""`tokenmill serve`: the engine core in its own process, the HTTP API on uvicorn in this one."""

from __future__ import annotations

import logging
import resource
import signal
import sys

import uvicorn
from fastapi import FastAPI

from tokenmill.config import EngineConfig
from tokenmill.model.tokenizer import load_tokenizer
from tokenmill.server.app import build_app
from tokenmill.server.config import ServerConfig

logger = logging.getLogger(__name__)


def serve(engine_config: EngineConfig, config: ServerConfig) -> None:
    """Serves until SIGINT or SIGTERM; on either, stops accepting, lets in-flight requests finish
    (up to drain_timeout_s), then stops the engine."""
    tokenizer = load_tokenizer(engine_config.model.model)
    app = build_app(engine_config, config, tokenizer)
    logger.info("serving %s at http://%s:%d", config.served_model_name, config.host, config.port)
    run_app(app, config.host, config.port, config.drain_timeout_s, "info")


def _raise_open_files_limit(wanted: int = 65536) -> None:
    """Each client holds a socket: lift the soft limit on open files (often 1,024) toward the hard
    one, so that thousands of connections are served rather than refused at accept."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        logger.info("open files limit raised from %d to %d", soft, target)


def run_app(app: FastAPI, host: str, port: int, drain_timeout_s: float, log_level: str) -> None:
    """Runs an app on uvicorn until SIGINT or SIGTERM, draining in-flight requests; exits with the
    app's state.exit_code (0 unless the app stopped itself on a failure)."""
    _raise_open_files_limit()
    # uvicorn drains on SIGTERM, then raises it again: make that an orderly exit, so multiprocessing
    # releases its queues' semaphores instead of the process dying on the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(getattr(app.state, "exit_code", 0)))
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain_timeout_s)
