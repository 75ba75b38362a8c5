"""What a request constrains its output to, in vLLM's shape (`StructuredOutputsParams`): exactly
one of a JSON schema, any JSON object, a regex, a choice among strings, or a Lark/EBNF grammar."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any


class StructuredOutputsError(ValueError):
    """A constraint that cannot be used; `param` names the request field it came from."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class StructuredOutputsParams:
    json: dict | str | None = None  # a JSON schema (an object, or its text)
    json_object: bool = False  # any JSON object
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None  # Lark, or llama.cpp's GBNF (EBNF)

    def __post_init__(self) -> None:
        if self.choice is not None:
            object.__setattr__(self, "choice", tuple(self.choice))
        chosen = [f.name for f in fields(self) if getattr(self, f.name) not in (None, False)]
        if len(chosen) != 1:
            raise StructuredOutputsError("structured_outputs", "structured_outputs takes exactly one of json, "
                                         f"json_object, regex, choice, grammar; got {chosen or 'none'}")
        if self.choice is not None and (not self.choice or not all(isinstance(c, str) for c in self.choice)):
            raise StructuredOutputsError("structured_outputs", "choice must be a non-empty list of strings")

    @property
    def key(self) -> tuple[str, str]:
        """(kind, text): equal for equal constraints, so compiled grammars are shared. Keys keep
        their order: the grammar writes properties in the schema's order (a "reasoning" field
        declared before an "answer" comes first)."""
        if self.json is not None:
            return "json", self.json if isinstance(self.json, str) else json.dumps(self.json)
        if self.json_object:
            return "json", '{"type": "object"}'
        if self.regex is not None:
            return "regex", self.regex
        if self.choice is not None:
            return "choice", json.dumps(list(self.choice))
        return "grammar", self.grammar or ""

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> StructuredOutputsParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise StructuredOutputsError("structured_outputs", f"unknown structured_outputs keys {unknown}; "
                                                               f"known: {sorted(known)}")
        return cls(**options)
