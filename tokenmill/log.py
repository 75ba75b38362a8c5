"""How tokenmill's processes log: one format for the CLI and the engine core it starts."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int) -> None:
    logging.basicConfig(level=level, format=FORMAT)
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))  # not a line per request the router sends


def tokenmill_level() -> int:
    """The level tokenmill logs at in this process, to hand to a process it starts."""
    return logging.getLogger("tokenmill").getEffectiveLevel()
