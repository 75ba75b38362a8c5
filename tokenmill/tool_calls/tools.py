"""The functions a chat request offers (`tools`) and how it lets the model use them (`tool_choice`),
checked from OpenAI's request shapes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

# OpenAI's rule for function names
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
ANY_OBJECT: dict[str, Any] = {"type": "object"}


class ToolError(ValueError):
    """A tools or tool_choice value that cannot be used; `param` names the request field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: dict(ANY_OBJECT))

    def function_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    @classmethod
    def from_openai(cls, index: int, entry: Any) -> Tool:
        where = f"tools[{index}]"
        if not isinstance(entry, dict) or entry.get("type") != "function" or not isinstance(entry.get("function"), dict):
            raise ToolError("tools", f'{where} must be {{"type": "function", "function": {{"name": ...}}}}')
        function = entry["function"]
        name = function.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
            raise ToolError("tools", f"{where}.function.name must be 1-64 letters, digits, _ or -; got {name!r}")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = dict(ANY_OBJECT)
        if not isinstance(parameters, dict):
            raise ToolError("tools", f"{where}.function.parameters must be a JSON schema object")
        description = function.get("description") or ""
        return cls(name, description if isinstance(description, str) else str(description), parameters)


@dataclass(frozen=True)
class ToolChoice:
    mode: Literal["none", "auto", "required"]
    function: str | None = None  # a named function: mode "required", restricted to it

    @classmethod
    def from_openai(cls, value: Any, tools: list[Tool]) -> ToolChoice:
        """OpenAI's default: "auto" when tools are offered, else "none"."""
        if value is None:
            return cls("auto" if tools else "none")
        if value in ("none", "auto", "required"):
            if value != "none" and not tools:
                raise ToolError("tool_choice", f'tool_choice "{value}" needs tools')
            return cls(value)
        function = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise ToolError("tool_choice", 'tool_choice must be "none", "auto", "required" or '
                                           '{"type": "function", "function": {"name": ...}}')
        if name not in {tool.name for tool in tools}:
            raise ToolError("tool_choice", f"tool_choice names the function {name!r}, which is not in tools")
        return cls("required", name)


def parse_tools(entries: list[Any] | None) -> list[Tool]:
    tools = [Tool.from_openai(i, entry) for i, entry in enumerate(entries or [])]
    names = [tool.name for tool in tools]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ToolError("tools", f"tools name {duplicated[0]!r} more than once")
    return tools


@dataclass(frozen=True)
class ToolUse:
    """What a chat request lets the model do with tools."""

    tools: list[Tool]
    choice: ToolChoice
    parallel: bool = True  # OpenAI's parallel_tool_calls: more than one call in an answer

    @classmethod
    def from_openai(cls, tools: list[Any] | None, tool_choice: Any, parallel: bool) -> ToolUse | None:
        """None when the model may not call anything (no tools, or tool_choice "none")."""
        parsed = parse_tools(tools)
        choice = ToolChoice.from_openai(tool_choice, parsed)
        return None if choice.mode == "none" else cls(parsed, choice, parallel)
