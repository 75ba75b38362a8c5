"""The bench's judge of constrained outputs: parses, and validates against the response format's schema."""

from tokenmill.bench.validity import follows_format

SCHEMA = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
    "type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}, "required": ["n"]}}}


def test_parses_and_validates():
    assert follows_format(SCHEMA, '{"n": 2}')
    assert not follows_format(SCHEMA, '{"n": 4}')  # parses, breaks the schema
    assert not follows_format(SCHEMA, '{"n": 2')  # cut off
    assert follows_format({"type": "json_object"}, '{"a": [1]}')
    assert not follows_format({"type": "json_object"}, "[1]")
