"""What every benchmark prints beside its numbers: the command, the load, and markdown rows for the docs
(the machine: tokenmill/kernels/cpu_info.py)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterable


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


def print_figures(header: list[str], rows: list[list[str]], every_run: dict[str, list[float]],
                  notes: Iterable[str] = ()) -> None:  # fmt: skip
    """A benchmark's table as markdown, every run of each figure, the notes, and the command."""
    print("\n".join(markdown_table(header, rows)))
    for key, values in every_run.items():
        print(f"{key}, every run: {', '.join(f'{v:.2f}' for v in values)}")
    for note in notes:
        print(note)
    print(command_line())
