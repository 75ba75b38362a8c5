"""Regenerate the benchmark text: python_docs.txt, the prose paragraphs of CPython's
`pydoc_data.topics`, and python_code.jsonl, the top-level functions and classes of a few pure-Python
standard-library modules.

Run with any CPython 3: `python tokenmill/bench/data/make_corpus.py`. The output depends on the
CPython version read; the committed files name it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path

from pydoc_data.topics import topics

OUT_PATH = Path(__file__).with_name("python_docs.txt")
CODE_PATH = Path(__file__).with_name("python_code.jsonl")
CODE_MODULES = ("bisect", "colorsys", "fractions", "graphlib", "heapq", "shlex", "statistics", "string", "textwrap")
MIN_CODE_LINES = 6
MIN_WORDS = 12
MIN_LETTER_FRACTION = 0.88  # letters and spaces; code and grammar rules fall well below this
SENTENCE_END = (".", "?", "!", ".)", '."')
UNDERLINE = re.compile(r"^([*=\-~^])\1{2,}$")


def paragraphs(topic_text: str) -> list[str]:
    """Blank-line separated blocks, each dedented and reflowed onto one line."""
    blocks = re.split(r"\n\s*\n", topic_text)
    return [" ".join(textwrap.dedent(block).split()) for block in blocks if not _is_heading(block)]


def _is_heading(block: str) -> bool:
    lines = block.strip().splitlines()
    return len(lines) == 2 and bool(UNDERLINE.match(lines[1].strip()))


def is_prose(paragraph: str) -> bool:
    if len(paragraph.split()) < MIN_WORDS or not paragraph.endswith(SENTENCE_END):
        return False
    if ">>>" in paragraph or "::=" in paragraph:
        return False
    letters = sum(ch.isalpha() or ch == " " for ch in paragraph)
    return letters / len(paragraph) >= MIN_LETTER_FRACTION


def main() -> None:
    # Several topics repeat whole sections of others; dict.fromkeys keeps first occurrences in order.
    prose = list(dict.fromkeys(p for name in sorted(topics) for p in paragraphs(topics[name]) if is_prose(p)))
    header = f"Prose from the Python {sys.version.split()[0]} documentation (pydoc_data.topics)."
    OUT_PATH.write_text("\n\n".join([header, *prose]) + "\n", encoding="utf-8")
    print(f"wrote {len(prose)} paragraphs, {OUT_PATH.stat().st_size} bytes to {OUT_PATH}")
    snippets = [s for name in CODE_MODULES for s in code_snippets(name)]
    version = sys.version.split()[0]
    lines = [json.dumps({"python": version, "module": m, "name": n, "source": src}) for m, n, src in snippets]
    CODE_PATH.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(snippets)} functions and classes, {CODE_PATH.stat().st_size} bytes to {CODE_PATH}")


def code_snippets(module_name: str) -> list[tuple[str, str, str]]:
    """(module, name, source) of each top-level function and class of at least MIN_CODE_LINES lines."""
    source = inspect.getsource(importlib.import_module(module_name))
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            text = ast.get_source_segment(source, node)
            if text is not None and text.count("\n") + 1 >= MIN_CODE_LINES:
                found.append((module_name, node.name, text))
    return found


if __name__ == "__main__":
    main()
