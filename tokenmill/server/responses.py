"""OpenAI response bodies and stream chunks for completions and chat completions."""

from __future__ import annotations

import json

from tokenmill.engine.output_processor import CompletionDelta
from tokenmill.outputs import Logprob
from tokenmill.server.generation import Choice, RequestRun
from tokenmill.tool_calls.format import ToolCallFormat
from tokenmill.tool_calls.parser import CallDelta, ToolCall, ToolCallParser


def sse(payload: dict | str) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def _top(entries: dict[int, Logprob], n: int) -> list[Logprob]:
    return sorted(entries.values(), key=lambda lp: lp.rank)[:n]


def _token_text(token_id: int, entries: dict[int, Logprob]) -> str:
    return entries[token_id].decoded_token or ""


# ---- completions -----------------------------------------------------------------------------------


def completion_logprobs(pairs: list[tuple[int, dict[int, Logprob]]], n: int, text_offset: int = 0) -> dict:
    tokens, offsets = [], []
    for token_id, entries in pairs:
        offsets.append(text_offset)
        tokens.append(_token_text(token_id, entries))
        text_offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [entries[token_id].logprob for token_id, entries in pairs],
        "top_logprobs": [{lp.decoded_token: lp.logprob for lp in _top(entries, n)} for _, entries in pairs],
        "text_offset": offsets,
    }


def completion_body(run: RequestRun, model: str) -> dict:
    n = run.params.logprobs
    choices = [
        {"index": i, "text": c.text, "finish_reason": c.finish_reason, "stop_reason": c.stop_reason,
         "logprobs": completion_logprobs(c.logprobs, n) if n is not None else None}
        for i, c in enumerate(run.choices)
    ]  # fmt: skip
    return {"id": run.request_id, "object": "text_completion", "created": run.created, "model": model,
            "choices": choices, "usage": run.usage(), "timings": run.timings(), **run.kv_transfer_field()}


def completion_chunk(run: RequestRun, model: str, delta: CompletionDelta, text_offset: int) -> dict:
    n = run.params.logprobs
    logprobs = None
    if n is not None and delta.logprobs is not None:
        logprobs = completion_logprobs(list(zip(delta.token_ids, delta.logprobs)), n, text_offset)
    choice = {"index": delta.index, "text": delta.text, "logprobs": logprobs, "finish_reason": delta.finish_reason,
              "stop_reason": delta.stop_reason}
    return {"id": run.request_id, "object": "text_completion", "created": run.created, "model": model,
            "choices": [choice]}


# ---- chat ------------------------------------------------------------------------------------------


def chat_logprobs(pairs: list[tuple[int, dict[int, Logprob]]], n: int) -> dict:
    def entry(lp: Logprob) -> dict:
        text = lp.decoded_token or ""
        return {"token": text, "logprob": lp.logprob, "bytes": list(text.encode())}

    content = []
    for token_id, entries in pairs:
        content.append({**entry(entries[token_id]), "top_logprobs": [entry(lp) for lp in _top(entries, n)]})
    return {"content": content}


def chat_body(run: RequestRun, model: str, tool_format: ToolCallFormat | None) -> dict:
    n = run.params.logprobs
    choices = []
    for i, c in enumerate(run.choices):
        message, finish_reason = {"role": "assistant", "content": c.text}, c.finish_reason
        if tool_format is not None:
            parser = ToolCallParser(tool_format)
            parser.feed(c.text)
            parser.finish()
            message, finish_reason = _tool_message(parser.content, parser.calls), _finish_reason(c, parser)
        choices.append({"index": i, "message": message, "finish_reason": finish_reason, "stop_reason": c.stop_reason,
                        "logprobs": chat_logprobs(c.logprobs, n) if n is not None else None})
    return {"id": run.request_id, "object": "chat.completion", "created": run.created, "model": model,
            "choices": choices, "usage": run.usage(), "timings": run.timings(), **run.kv_transfer_field()}


def _tool_message(content: str, calls: list[ToolCall]) -> dict:
    if not calls:
        return {"role": "assistant", "content": content}
    return {"role": "assistant", "content": content.strip() or None, "tool_calls": [c.openai_dict() for c in calls]}


def _finish_reason(choice: Choice | CompletionDelta, parser: ToolCallParser) -> str | None:
    """OpenAI's "tool_calls" for an answer that ends having called tools."""
    return "tool_calls" if parser.calls and choice.finish_reason == "stop" else choice.finish_reason


class ChatDeltas:
    """Engine deltas to chat-chunk deltas, each choice's text through a tool-call parser when tools are on."""

    def __init__(self, n: int, tool_format: ToolCallFormat | None) -> None:
        self._parsers = [ToolCallParser(tool_format) for _ in range(n)] if tool_format is not None else None

    def delta(self, out: CompletionDelta) -> tuple[dict, str | None]:
        """The chunk's delta and finish reason."""
        if self._parsers is None:
            return {"content": out.text}, out.finish_reason
        parser = self._parsers[out.index]
        parsed = parser.feed(out.text)
        if out.finish_reason is not None:
            parsed.content += parser.finish().content
        delta: dict = {"content": parsed.content} if parsed.content else {}
        if parsed.calls:
            delta["tool_calls"] = [_call_delta(call) for call in parsed.calls]
        return delta, _finish_reason(out, parser)


def _call_delta(call: CallDelta) -> dict:
    if call.id is None:
        return {"index": call.index, "function": {"arguments": call.arguments}}
    return {"index": call.index, "id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def chat_chunk(run: RequestRun, model: str, index: int, delta: dict, delta_out: CompletionDelta | None,
               finish_reason: str | None = None) -> dict:  # fmt: skip
    n = run.params.logprobs
    logprobs = None
    if delta_out is not None and n is not None and delta_out.logprobs is not None:
        logprobs = chat_logprobs(list(zip(delta_out.token_ids, delta_out.logprobs)), n)
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return {"id": run.request_id, "object": "chat.completion.chunk", "created": run.created, "model": model,
            "choices": [choice]}


def usage_chunk(run: RequestRun, model: str, obj: str) -> dict:
    return {"id": run.request_id, "object": obj, "created": run.created, "model": model, "choices": [],
            "usage": run.usage(), "timings": run.timings()}


def is_empty(delta: CompletionDelta) -> bool:
    """Nothing a client would see: no text, no finish, no logprobs (a held-back stop-string tail)."""
    return not delta.text and delta.finish_reason is None and not delta.logprobs

