"""`tokenmill serve`: the engine core in its own process, the HTTP API on uvicorn in this one."""

from __future__ import annotations

import logging
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


def run_app(app: FastAPI, host: str, port: int, drain_timeout_s: float, log_level: str) -> None:
    """Runs an app on uvicorn until SIGINT or SIGTERM, draining in-flight requests, exit code 0."""
    # uvicorn drains on SIGTERM, then raises it again: make that an orderly exit, so multiprocessing
    # releases its queues' semaphores instead of the process dying on the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain_timeout_s)
