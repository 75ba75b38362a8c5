"""Regenerate python_docs.txt: the prose paragraphs of CPython's `pydoc_data.topics`.

Run with any CPython 3: `python tokenmill/bench/data/make_corpus.py`. The output depends on the
CPython version whose documentation is read; the committed file names it in its first line.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

from pydoc_data.topics import topics

OUT_PATH = Path(__file__).with_name("python_docs.txt")
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


if __name__ == "__main__":
    main()
