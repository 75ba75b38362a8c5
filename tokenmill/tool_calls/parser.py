"""The model's text back into content and OpenAI tool calls, as it streams.

Text outside the format's tags is content. Inside them the parser follows the JSON character by
character (depth, strings, escapes), so that a call is announced (id and name) as soon as its
name is complete and its arguments stream as they are written. A whole response is the same
parser fed everything at once, so streamed and unstreamed answers cannot disagree.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from tokenmill.tool_calls.format import ToolCallFormat


@dataclass
class CallDelta:
    """A piece of one call: its first piece carries id and name, later ones more arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ParsedDelta:
    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)

    def add_arguments(self, index: int, text: str) -> None:
        if self.calls and self.calls[-1].index == index:
            self.calls[-1].arguments += text
        else:
            self.calls.append(CallDelta(index, arguments=text))


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text of the arguments, as the model wrote it

    def openai_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallParser:
    def __init__(self, fmt: ToolCallFormat) -> None:
        self._fmt = fmt
        self.content = ""
        self.calls: list[ToolCall] = []
        self._mode = "text"  # "text", "calls" (inside the JSON), "after" (the JSON done, expecting the end tag)
        self._pending = ""  # text not yet classified: a possible start of a tag
        # the JSON scan
        self._depth = 0
        self._in_string = self._escape = False
        self._element_depth = 0  # where call objects sit: 2 inside a list, 1 for a lone object
        self._key_text: str | None = None  # a key being read
        self._key: str | None = None
        self._value_key: str | None = None  # the key whose value is being read
        self._value = ""
        # the call being read
        self._name: str | None = None
        self._arguments = ""
        self._announced = False
        self._id = ""

    def feed(self, text: str) -> ParsedDelta:
        out = ParsedDelta()
        self._pending += text
        while self._pending:
            before = (self._mode, len(self._pending))
            if self._mode == "text":
                self._read_text(out)
            elif self._mode == "calls":
                text, self._pending = self._pending, ""
                for position, char in enumerate(text):
                    self._scan(char, out)
                    if self._mode != "calls":
                        self._pending = text[position + 1:]
                        break
            else:
                self._read_end()
            if (self._mode, len(self._pending)) == before:
                break  # waiting for more text
        self.content += out.content
        return out

    def finish(self) -> ParsedDelta:
        """The text held back at the end (a partial tag that never completed) is content; a call
        cut off before its end is dropped."""
        out = ParsedDelta()
        if self._mode == "text" or (self._mode == "after" and not self._fmt.end.startswith(self._pending)):
            out.content = self._pending
        self._pending = ""
        self.content += out.content
        return out

    def _read_text(self, out: ParsedDelta) -> None:
        begin = self._fmt.begin
        found = self._pending.find(begin)
        if found >= 0:
            out.content += self._pending[:found]
            self._pending = self._pending[found + len(begin):]
            self._mode, self._depth, self._element_depth = "calls", 0, 0
            return
        held = next((n for n in range(min(len(begin) - 1, len(self._pending)), 0, -1)
                     if self._pending.endswith(begin[:n])), 0)  # fmt: skip
        out.content += self._pending[: len(self._pending) - held]
        self._pending = self._pending[len(self._pending) - held:]

    def _read_end(self) -> None:
        end, rest = self._fmt.end, self._pending.lstrip()
        if rest.startswith(end):
            self._pending, self._mode = rest[len(end):], "text"
        elif rest and not end.startswith(rest):
            self._pending, self._mode = rest, "text"  # no end tag: what follows is content again

    def _track(self, char: str) -> None:
        if self._in_string:
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._in_string = False
        elif char == '"':
            self._in_string = True
        elif char in "[{":
            self._depth += 1
        elif char in "]}":
            self._depth -= 1

    def _scan(self, char: str, out: ParsedDelta) -> None:
        level = self._element_depth
        if self._value_key is not None:
            if not self._value and char.isspace():
                return
            if self._value and self._depth == level and not self._in_string and char in ",}":
                self._end_value(out)  # a number, true, false or null ends here
            else:
                self._value += char
                self._track(char)
                if self._value_key == "arguments":
                    self._add_arguments(char, out)
                if self._depth == level and not self._in_string and self._value[0] in '"[{':
                    self._end_value(out)
                return
        if self._key_text is not None:
            self._key_text += char
            self._track(char)
            if not self._in_string:
                self._key = _json_string(self._key_text)
                self._key_text = None
            return
        depth = self._depth
        self._track(char)
        if level == 0:
            if char in "[{":
                self._element_depth = 2 if char == "[" else 1
                if char == "{":
                    self._start_call()
        elif char == '"' and depth == level:
            self._key_text = char
        elif char == ":" and depth == level:
            self._value_key, self._value = self._key, ""
        elif char == "{" and depth == level - 1:
            self._start_call()
        elif char == "}" and self._depth == level - 1:
            self._end_call(out)
        if self._element_depth and self._depth == 0:
            self._mode = "after"

    def _start_call(self) -> None:
        self._name, self._arguments, self._announced, self._key = None, "", False, None

    def _end_value(self, out: ParsedDelta) -> None:
        key, value = self._value_key, self._value.strip()
        self._value_key, self._value = None, ""
        if key == "name":
            self._name = _json_string(value)
            self._announce(out)

    def _add_arguments(self, char: str, out: ParsedDelta) -> None:
        self._arguments += char
        if self._announced:
            out.add_arguments(len(self.calls), char)

    def _announce(self, out: ParsedDelta) -> None:
        if self._name is not None and not self._announced:
            self._announced = True
            self._id = new_call_id()
            out.calls.append(CallDelta(len(self.calls), self._id, self._name, self._arguments))

    def _end_call(self, out: ParsedDelta) -> None:
        if self._name is None:
            return  # an object without a name is not a call
        self._announce(out)
        if not self._arguments:
            self._arguments = "{}"
            out.add_arguments(len(self.calls), self._arguments)
        self.calls.append(ToolCall(self._id, self._name, self._arguments))


def _json_string(text: str) -> str | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None
