"""How tools and calls are written in the model's text: SmolLM2's format, the one its instruct
training used (its chat template has no tool syntax of its own).

The tools go into the system message as a JSON list between <tools> tags, and the model answers a
call as a JSON list of {"name", "arguments"} objects between <tool_call> tags:

    <tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>

One format object owns both directions (prompt and grammar, and the tags the parser looks for), so
a model with another format is one more `ToolCallFormat`, not edits across the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokenmill.structured.grammar import bounded_whitespace
from tokenmill.structured.params import StructuredOutputsParams
from tokenmill.tool_calls.tools import Tool, ToolUse


@dataclass(frozen=True)
class ToolCallFormat:
    begin: str = "<tool_call>"
    end: str = "</tool_call>"

    def system_prompt(self, tools: list[Tool]) -> str:
        listed = json.dumps([tool.function_dict() for tool in tools], ensure_ascii=False)
        return (
            "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
            "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
            "If none of the functions can be used, answer the question in plain text.\n\n"
            f"You have access to the following tools:\n<tools>{listed}</tools>\n\n"
            "To call tools, the output MUST strictly adhere to the following format, and NO other text MUST be "
            "included. Please make sure the parameter type is correct.\n"
            f'{self.begin}[\n{{"name": "func_name1", "arguments": {{"argument1": "value1", "argument2": "value2"}}}},\n'
            f"... (more tool calls as required)\n]{self.end}"
        )  # fmt: skip

    def conversation(self, messages: list[dict[str, Any]], use: ToolUse | None) -> list[dict[str, str]]:
        """OpenAI messages as a chat template takes them (role and text): earlier calls written in this
        format, tool results as "tool" messages, and the tools offered in the system message."""
        rendered = []
        for message in messages:
            content = message.get("content") or ""
            if message.get("tool_calls"):
                content += self.render_calls(message["tool_calls"])
            rendered.append({"role": message["role"], "content": content})
        if use is not None:
            prompt = self.system_prompt(use.tools)
            if rendered and rendered[0]["role"] == "system":
                rendered[0] = {"role": "system", "content": f"{rendered[0]['content']}\n\n{prompt}"}
            else:
                rendered.insert(0, {"role": "system", "content": prompt})
        return rendered

    def render_calls(self, calls: list[dict[str, Any]]) -> str:
        """An assistant message's earlier tool calls (OpenAI's shape) as the model would have written them."""
        written = []
        for call in calls:
            function = call.get("function", {})
            arguments = function.get("arguments") or "{}"
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass  # shown as the string the client sent
            written.append({"name": function.get("name"), "arguments": arguments})
        return f"{self.begin}{json.dumps(written, ensure_ascii=False)}{self.end}"

    def constraint(self, use: ToolUse) -> StructuredOutputsParams:
        """The grammar a request's output must follow: for "required" and a named function, a call and
        nothing else; for "auto", free text in which a call, once begun, must be valid to its end."""
        named = use.choice.function
        offered = [t for t in use.tools if named is None or t.name == named]
        calls = {"type": "array", "minItems": 1, "items": {"anyOf": [_call_schema(t) for t in offered]}}
        if not use.parallel or named is not None:
            calls["maxItems"] = 1
        begin, end, schema = json.dumps(self.begin), json.dumps(self.end), json.dumps(bounded_whitespace(calls))
        if use.choice.mode == "auto":
            # llguidance's lazy lexeme: text runs freely until it ends in the begin tag
            lark = (f"%llguidance {{}}\nstart: call* TEXT\ncall: call_begin %json {schema} {end}\n"
                    f"call_begin[lazy]: TEXT {begin}\nTEXT: /(.|\\n)*/\n")
        else:
            lark = f"%llguidance {{}}\nstart: {begin} %json {schema} {end}\n"
        return StructuredOutputsParams(grammar=lark)


def _call_schema(tool: Tool) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"], "additionalProperties": False}
