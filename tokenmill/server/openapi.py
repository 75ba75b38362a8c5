"""The server's OpenAPI document (GET /openapi.json), complete: every route's request body with each
field's bounds, and every answer it can give, the OpenAI error body for each 4xx and 5xx.

The routes read their bodies themselves (protocol.parse_body refuses deep nesting before parsing
and gives OpenAI's error shape), so FastAPI cannot see their models: the routes name them here.
The few bounds that are settings of the server (n, the token ids, the model names) are written
into the document as it is served, so a client or a fuzzer reads the limits this server enforces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_SCHEMAS = "#/components/schemas/"


# ---- the answers ---------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int]


class Timings(BaseModel):
    """Milliseconds; null where the request never reached that stage."""

    queue_ms: float | None
    ttft_ms: float | None
    decode_ms: float | None
    e2e_ms: float | None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    stop_reason: int | str | None
    logprobs: CompletionLogprobs | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    timings: Timings
    kv_transfer_params: dict[str, Any] | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ContentLogprob(TokenLogprob):
    top_logprobs: list[TokenLogprob]


class ChatLogprobs(BaseModel):
    content: list[ContentLogprob]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    stop_reason: int | str | None
    logprobs: ChatLogprobs | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    timings: Timings
    kv_transfer_params: dict[str, Any] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Version(BaseModel):
    version: str


# ---- what routes declare -------------------------------------------------------------------------

NOT_RUNNING = "the engine is not running (it exited or is restarting)"
_ERRORS = {
    400: "a field is missing, of the wrong type or out of its bounds; the body is not JSON, not UTF-8 or nests too deep",
    401: "the API key is missing or wrong",
    404: "the model (or adapter) named is not served",
    408: "the request did not finish within the server's --request-timeout",
    413: "the body is larger than the server's --max-request-bytes",
    415: "the body is not sent as application/json",
    429: "the server's queue is full; retry after the Retry-After header's seconds",
    503: NOT_RUNNING,
    500: "an unforeseen failure, or the engine failed this request; the server's log has the details",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's error answers, each with OpenAI's error body (install adds the 500 and the 401
    that every route, or every secured one, may give)."""
    return {status: {"model": ErrorBody, "description": _ERRORS[status]} for status in statuses}


def _error_answer(status: int) -> dict[str, Any]:
    return {"description": _ERRORS[status], "content": {"application/json": {"schema": {"$ref": _SCHEMAS + "ErrorBody"}}}}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra for a route that reads `model` from a JSON body itself."""
    schema = {"$ref": _SCHEMAS + model.__name__}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def generated(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The 200 of a generation route: the whole answer as JSON, or server-sent events when streamed."""
    # Before OpenAPI 3.2, an event stream's schema describes each event: its data is a chunk as
    # JSON, an error body, or [DONE] to end the stream.
    event = {"type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
             "required": ["data"]}  # fmt: skip
    events = {"schema": event, "example": 'data: {"choices": [...]}\n\ndata: [DONE]\n\n'}
    return {200: {"model": model, "description": "the answer; with stream: true, its chunks as server-sent events",
                  "content": {"text/event-stream": events}}}  # fmt: skip


def install(app: FastAPI, body_models: list[type[BaseModel]], limits: Callable[[], dict[str, dict[str, Any]]],
            secured_prefixes: tuple[str, ...]) -> None:
    """Serves the document with the request bodies' schemas in its components and, over them, the
    server's own limits: `limits()` maps a model's name to {field: the schema properties to set}.
    Routes under secured_prefixes need the API key as a bearer token."""

    def openapi() -> dict[str, Any]:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes,
                               description=app.description)  # fmt: skip
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in [*body_models, ErrorBody]:  # the error body: every route's 500 names it
            schema = model.model_json_schema(ref_template=_SCHEMAS + "{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        for name, fields in limits().items():
            for field, bounds in fields.items():
                _nullable_branch(schemas[name]["properties"][field]).update(bounds)
        if secured_prefixes:
            document["components"]["securitySchemes"] = {"api_key": {"type": "http", "scheme": "bearer"}}
        for path, operations in document["paths"].items():
            for operation in operations.values():
                operation["responses"].setdefault("500", _error_answer(500))
                if secured_prefixes and path.startswith(secured_prefixes):
                    operation["security"] = [{"api_key": []}]
                    operation["responses"].setdefault("401", _error_answer(401))
        return document  # built on each call: the models served change as adapters load

    app.openapi = openapi  # type: ignore[method-assign]


def _nullable_branch(schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null alternative of an optional field's schema, where its bounds go."""
    for branch in schema.get("anyOf", ()):
        if branch.get("type") != "null":
            return branch
    return schema
