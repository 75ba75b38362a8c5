"""Compiling the engine's C kernels on first use, cached by content, loaded with ctypes.

The shared objects are built with -march=native for the machine that runs them and link the
OpenMP runtime that torch has already loaded, so the kernels and torch share one thread pool.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch  # noqa: F401  (loads libgomp, which the kernels link against)

from tokenmill.kernels.cpu_info import cpu_flags

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent / "csrc"
FLAGS = (
    "-O3", "-march=native", "-fopenmp", "-fPIC", "-shared",
    # Lets the compiler vectorize dot products and sums (reassociation), nothing riskier.
    "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math",
)


def cache_dir() -> Path:
    root = os.environ.get("TOKENMILL_CACHE_DIR") or Path.home() / ".cache" / "tokenmill"
    return Path(root) / "kernels"


@functools.cache
def load_library(name: str, fallback: str = "PyTorch") -> ctypes.CDLL | None:
    """The compiled csrc/<name>.c, or None (logged, naming what runs instead) where no C compiler can build it."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found: %s kernels fall back to %s", name, fallback)
        return None
    sources = [(SOURCE_DIR / f"{name}.c").read_text(), *(h.read_text() for h in sorted(SOURCE_DIR.glob("*.h")))]
    identity = [*sources, compiler, *FLAGS, platform.machine(), " ".join(cpu_flags())]  # -march=native: per CPU
    key = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{key}.so"
    if not path.exists():
        try:
            _compile(compiler, SOURCE_DIR / f"{name}.c", path)
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", b"").decode(errors="replace")[-2000:]
            logger.warning("could not compile the %s kernel (%s): falling back to %s\n%s", name, error, fallback,
                           detail)
            return None
    return ctypes.CDLL(str(path))


def _compile(compiler: str, source: Path, target: Path) -> None:
    start = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent first uses never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *FLAGS, str(source), "-o", str(built), "-lm"], check=True, capture_output=True)
        os.replace(built, target)
    logger.info("compiled the %s kernel in %.1f s", source.stem, time.monotonic() - start)
