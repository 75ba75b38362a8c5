"""Whether a constrained request's output is what its response format asked for: JSON that parses
and, under a json_schema format, validates (by jsonschema, independent of the server's grammar)."""

from __future__ import annotations

import json

import jsonschema


def follows_format(response_format: dict, text: str) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    kind = response_format.get("type")
    if kind == "json_object":
        return isinstance(value, dict)
    schema = (response_format.get("json_schema") or {}).get("schema")
    if kind != "json_schema" or schema is None:
        return True
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True
