"""Cached answers are whole response bodies. A streamed answer is put together into one as it passes
(StreamCapture); a body is replayed as a stream for a streamed hit (as_events).

To put a stream together the router needs its usage, so a cacheable stream is asked of the backend
with usage included, and the usage chunk is passed on only when the client asked for it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, Response, StreamingResponse

_CHAT_DELTA_KEYS = {"role", "content"}  # what a stream may hold and still be put together (no tool calls)
_LOGPROB_LISTS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


def with_usage(body: dict) -> dict:
    options = body.get("stream_options")
    return {**body, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}


def wants_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


class StreamCapture:
    """Passes a backend's server-sent events on, event by event, and keeps what they amount to."""

    def __init__(self, pass_usage: bool) -> None:
        self.pass_usage = pass_usage
        self._pending = bytearray()
        self._chunks: list[dict] = []
        self._usable, self._done = True, False

    async def events(self, raw: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for data in raw:
            self._pending += data
            while (end := self._pending.find(b"\n\n")) >= 0:
                event = bytes(self._pending[: end + 2])
                del self._pending[: end + 2]
                if self._keep(event):
                    yield event
        if self._pending:
            yield bytes(self._pending)

    def _keep(self, event: bytes) -> bool:
        """Reads one event; False for a usage chunk the client did not ask for."""
        payload = event.strip().removeprefix(b"data:").strip()
        if payload == b"[DONE]":
            self._done = True
            return True
        try:
            chunk = json.loads(payload)
        except ValueError:
            self._usable = False
            return True
        if not isinstance(chunk, dict) or "error" in chunk:
            self._usable = False
            return True
        self._chunks.append(chunk)
        return self.pass_usage or bool(chunk.get("choices")) or not chunk.get("usage")

    def body(self) -> dict | None:
        """The non-streamed body this stream amounts to; None unless it ended well, with its usage,
        holding only what can be put together."""
        if not (self._usable and self._done and self._chunks and self._chunks[-1].get("usage")):
            return None
        first, choices = self._chunks[0], {}
        chat = first.get("object") == "chat.completion.chunk"
        for chunk in self._chunks:
            for part in chunk.get("choices") or []:
                choice = choices.setdefault(part["index"], _empty_choice(part["index"], chat))
                if not _add(choice, part, chat):
                    return None
        return {"id": first.get("id"), "object": "chat.completion" if chat else "text_completion",
                "created": first.get("created"), "model": first.get("model"),
                "choices": [choices[i] for i in sorted(choices)], "usage": self._chunks[-1]["usage"]}  # fmt: skip


def _empty_choice(index: int, chat: bool) -> dict:
    common = {"index": index, "finish_reason": None, "stop_reason": None, "logprobs": None}
    return {**common, "message": {"role": "assistant", "content": ""}} if chat else {**common, "text": ""}


def _add(choice: dict, part: dict, chat: bool) -> bool:
    if chat:
        delta = part.get("delta") or {}
        if not delta.keys() <= _CHAT_DELTA_KEYS:
            return False
        choice["message"]["content"] += delta.get("content") or ""
    else:
        choice["text"] += part.get("text") or ""
    for field in ("finish_reason", "stop_reason"):
        if part.get(field) is not None:
            choice[field] = part[field]
    if part.get("logprobs"):
        choice["logprobs"] = _joined(choice["logprobs"], part["logprobs"], chat)
    return True


def _joined(so_far: dict | None, more: dict, chat: bool) -> dict:
    if so_far is None:
        return {key: list(value) for key, value in more.items()}
    keys = ("content",) if chat else _LOGPROB_LISTS
    return {key: so_far.get(key, []) + (more.get(key) or []) for key in keys}


def replay_response(body: dict, request_body: dict, headers: dict[str, str]) -> Response:
    """A whole answer as the request asked for it: a stream, or one JSON body."""
    if request_body.get("stream"):
        return StreamingResponse(iter(as_events(body, wants_usage(request_body))), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **headers})  # fmt: skip
    return JSONResponse(body, headers=headers)


def as_events(body: dict, include_usage: bool) -> list[str]:
    """A whole body as the server-sent events of one stream: each choice in one chunk."""
    chat = body.get("object") == "chat.completion"
    head = {"id": body.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": body.get("created"), "model": body.get("model")}  # fmt: skip
    chunks = []
    for choice in body.get("choices", []):
        part = {"index": choice["index"], "logprobs": choice.get("logprobs"),
                "finish_reason": choice.get("finish_reason"), "stop_reason": choice.get("stop_reason")}  # fmt: skip
        if chat:
            chunks.append({**head, "choices": [{"index": choice["index"], "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}]})  # fmt: skip
            part["delta"] = _as_delta(choice["message"])
        else:
            part["text"] = choice.get("text", "")
        chunks.append({**head, "choices": [part]})
    if include_usage:
        chunks.append({**head, "choices": [], "usage": body.get("usage")})
    return [f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n" for chunk in chunks] + ["data: [DONE]\n\n"]


def _as_delta(message: dict) -> dict:
    delta = {"content": message.get("content")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
    return delta
