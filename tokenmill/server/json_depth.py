"""How deeply a JSON body nests, found before it is parsed: the decoder recurses per level, so a
body of a few thousand brackets would otherwise end in a RecursionError (a 500), and a body deep
enough to pass the decoder still costs every later pass over it."""

from __future__ import annotations

import re

MAX_JSON_DEPTH = 64  # an OpenAI request body nests about 6 levels; a tool's JSON schema a few more

# A body as runs of non-quote bytes and whole strings, each matched possessively: linear time, and
# no match where a string does not close (the parser then says what is wrong).
_STRINGS_CLOSE = re.compile(rb'(?:[^"]++|"(?:[^"\\]++|\\.)*+")*+', re.DOTALL)
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")


def nests_deeper_than(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the body's arrays and objects nest more than `limit` levels (False where its
    brackets or strings do not match up: the parser reports that)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    if _STRINGS_CLOSE.fullmatch(raw) is None:
        return False
    brackets = _STRING.sub(b"", raw).translate(None, delete=_NOT_BRACKETS)
    for _ in range(limit):  # each pass removes exactly the innermost level
        if not brackets:
            return False
        shallower = _INNERMOST.sub(b"", brackets)
        if len(shallower) == len(brackets):
            return False  # unmatched brackets
        brackets = shallower
    return bool(brackets)
