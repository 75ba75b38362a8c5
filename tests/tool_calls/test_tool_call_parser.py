"""The tool-call parser: streamed in any pieces, it gives what it gives fed all at once, and that
agrees with json.loads of the text the model wrote."""

import json
import random

import pytest

from tokenmill.tool_calls.format import ToolCallFormat
from tokenmill.tool_calls.parser import ToolCallParser

FORMAT = ToolCallFormat()
TEXTS = [
    'Let me look. <tool_call>[{"name": "get_weather", "arguments": {"city": "Pa\\"ris}]", "days": [1, {"x": 2}]}}, '
    '{"name": "get_time", "arguments": {}}]</tool_call>',
    "no call here, only a < and a <tool",
    '<tool_call>\n{"name": "lone", "arguments": {"a": 1}}\n</tool_call> and after',
    '<tool_call>[{"arguments": {"b": [true, null]}, "name": "args_first"}]</tool_call>',
    '<tool_call>[{"name": "no_args"}]</tool_call>',
    '<tool_call>[{"name": "cut", "argu',
]


def _one_shot(text: str) -> ToolCallParser:
    parser = ToolCallParser(FORMAT)
    parser.feed(text)
    parser.finish()
    return parser


def _expected_calls(text: str) -> list[tuple[str, dict]]:
    """The calls by json.loads of each complete block: an independent reading of the same text."""
    calls = []
    for block in text.split(FORMAT.begin)[1:]:
        if FORMAT.end not in block:
            continue
        value = json.loads(block.split(FORMAT.end)[0])
        for call in value if isinstance(value, list) else [value]:
            calls.append((call["name"], call.get("arguments", {})))
    return calls


@pytest.mark.parametrize("text", TEXTS)
def test_whole_text_matches_json_loads(text):
    parser = _one_shot(text)
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == _expected_calls(text)
    outside = text.split(FORMAT.begin)[0] + "".join(b.split(FORMAT.end, 1)[1] for b in text.split(FORMAT.begin)[1:]
                                                    if FORMAT.end in b)  # fmt: skip
    assert parser.content.strip() == outside.strip()
    assert len({c.id for c in parser.calls}) == len(parser.calls)


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_add_up_to_the_whole(text):
    whole = _one_shot(text)
    rng = random.Random(0)
    for _ in range(100):
        parser, content, names, arguments, position = ToolCallParser(FORMAT), "", {}, {}, 0
        while position < len(text):
            size = rng.randint(1, 8)
            delta = parser.feed(text[position : position + size])
            position += size
            content += delta.content
            for call in delta.calls:
                if call.id is not None:
                    assert call.index not in names, "a call is announced once"
                    names[call.index] = call.name
                assert call.index in names, "arguments come after the call's announcement"
                arguments[call.index] = arguments.get(call.index, "") + call.arguments
        content += parser.finish().content
        assert content == parser.content == whole.content
        assert [(names[i], arguments[i]) for i in range(len(parser.calls))] == \
            [(c.name, c.arguments) for c in whole.calls]
