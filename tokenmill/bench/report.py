"""What every benchmark prints beside its numbers: the machine, and markdown rows for the docs."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path


# The CPU's matrix and vector units that decide which kernels and precisions are fast on it.
MATRIX_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """Which of MATRIX_FEATURES this CPU has, detected at run time (they differ machine to machine)."""
    flags = next((line.split(":", 1)[1].split() for line in _cpuinfo() if line.startswith("flags")), [])
    return [feature for feature in MATRIX_FEATURES if feature in flags]


def _cpuinfo() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text().splitlines() if cpuinfo.exists() else []


def markdown_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: list[str], rows: Iterable[Iterable[str]], align: list[str] | None = None) -> list[str]:
    """align: '---' or '---:' per column (default: first left, the rest right)."""
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    return [markdown_row(header), markdown_row(align), *(markdown_row(row) for row in rows)]


def command_line() -> str:
    return "`" + shlex.join(["python", *sys.argv]) + "`"


def load_average_note(load_before: float) -> str:
    """Both sides of a comparison use every core: anything else running skews the numbers."""
    return f"1-minute load average before the run: {load_before:.2f} on {os.cpu_count()} cores"
