"""The OpenAI-compatible HTTP API over an AsyncEngine: routes, auth, body limits, error bodies."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException

import tokenmill
from tokenmill.config import EngineConfig
from tokenmill.engine.async_engine import AsyncEngine
from tokenmill.model.tokenizer import Tokenizer
from tokenmill.sampling_params import SamplingParams
from tokenmill.server import responses
from tokenmill.lora.request import LoRARequest
from tokenmill.server.adapters import AdapterRegistry
from tokenmill.server.admission import AdmissionControl
from tokenmill.server.config import ServerConfig
from tokenmill.server.errors import APIError, api_key_check, bad_request, http_error, internal_error
from tokenmill.server.generation import RequestRun, ServerState
from tokenmill.server.metrics import ServerMetrics
from tokenmill.server import openapi
from tokenmill.server.openapi import errors, generated, request_body
from tokenmill.server.protocol import (
    ChatCompletionRequest, CompletionRequest, LoadAdapterRequest, RequestLimits, UnloadAdapterRequest, parse_body,
)  # fmt: skip
from tokenmill.structured.grammar import GrammarCompiler
from tokenmill.tool_calls.format import ToolCallFormat


def build_app(engine_config: EngineConfig, config: ServerConfig, tokenizer: Tokenizer) -> FastAPI:
    metrics = ServerMetrics(config.served_model_name, 0 if engine_config.lora is None else engine_config.lora.max_loras)
    engine = AsyncEngine(engine_config, tokenizer, on_step=lambda out: metrics.observe_engine(out.stats),
                         max_restarts=config.max_engine_restarts, on_gone=lambda: _stop_server(app))
    adapters = AdapterRegistry(config.served_model_name, engine_config.lora is not None, config.lora_modules)
    state = ServerState(engine, config, metrics, AdmissionControl(config.max_queued_requests, config.max_queued_tokens),
                        adapters)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        yield
        await engine.shutdown()

    # With a key, the document (which names the adapters served) is behind it too, and the pages
    # that read it without one are off.
    hidden = {"openapi_url": None, "docs_url": None, "redoc_url": None} if config.api_key is not None else {}
    app = FastAPI(title="tokenmill", version=tokenmill.__version__, lifespan=lifespan, **hidden)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_request_bytes)
    if config.allowed_origins:  # closed unless configured: no browser page may call the API
        # Any request header: browser clients send their own (the openai package's x-stainless-*).
        app.add_middleware(CORSMiddleware, allow_origins=list(config.allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])  # fmt: skip
    app.add_exception_handler(APIError, lambda request, exc: exc.response())
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    key_check = Depends(api_key_check(config.api_key))
    app.include_router(_public_routes(state))
    app.include_router(_metrics_route(state), dependencies=[key_check] if config.api_key_on_metrics else [])
    app.include_router(_v1_routes(state, tokenizer), dependencies=[key_check])
    secured = () if config.api_key is None else ("/v1/", "/metrics") if config.api_key_on_metrics else ("/v1/",)
    openapi.install(app, BODIES, lambda: _limits(state), secured)
    if config.api_key is not None:
        app.add_api_route("/openapi.json", lambda: JSONResponse(app.openapi()), include_in_schema=False,
                          dependencies=[key_check])  # fmt: skip
    return app


def _stop_server(app: FastAPI) -> None:
    """The engine is gone for good: SIGTERM ourselves (uvicorn closes the connections) and exit
    with code 1, so that a supervisor restarts the server."""
    app.state.exit_code = 1
    os.kill(os.getpid(), signal.SIGTERM)


BODIES: list[type[BaseModel]] = [CompletionRequest, ChatCompletionRequest, LoadAdapterRequest, UnloadAdapterRequest]


def _limits(state: ServerState) -> dict[str, dict[str, dict]]:
    """The bounds that are this server's settings, for its OpenAPI document."""
    served = {"enum": [card["id"] for card in state.adapters.cards()]}
    n = {"maximum": state.config.max_n}
    return {"CompletionRequest": {"model": served, "n": n, "best_of": n},
            "ChatCompletionRequest": {"model": served, "n": n}}


async def _read(request: Request, model: type[BaseModel]) -> Any:
    """The request's JSON body as `model`: a 415 for a body sent as something else."""
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise APIError(415, f"the body must be sent as application/json, not {media_type!r}",
                       code="unsupported_media_type")
    return parse_body(await request.body(), model)


def _public_routes(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/health", response_class=Response,
                responses={200: {"description": "the engine runs"}, 503: {"description": openapi.NOT_RUNNING}})
    async def health() -> Response:
        return Response(status_code=200 if state.engine.is_alive else 503)

    @router.get("/version", response_model=openapi.Version)
    async def version() -> dict:
        return {"version": tokenmill.__version__}

    return router


def _metrics_route(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", response_class=Response,
                responses={200: {"description": "Prometheus' text format", "content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def _v1_routes(state: ServerState, tokenizer: Tokenizer) -> APIRouter:
    router = APIRouter(prefix="/v1")
    limits = RequestLimits(state.config.max_n, tokenizer.vocab_size, GrammarCompiler(tokenizer, tokenizer.vocab_size))
    tool_format = ToolCallFormat()
    adapters = state.adapters

    @router.get("/models", response_model=openapi.ModelList)
    async def models() -> dict:
        cards = [{**card, "max_model_len": state.engine.max_model_len} for card in adapters.cards()]
        return {"object": "list", "data": cards}

    adapter_answers = {200: {"description": "done", "content": {"text/plain": {"schema": {"type": "string"}}}},
                       **errors(400, 404, 413, 415)}  # fmt: skip

    @router.post("/load_lora_adapter", response_class=Response, responses=adapter_answers,
                 openapi_extra=request_body(LoadAdapterRequest))
    async def load_lora_adapter(request: Request) -> Response:
        body: LoadAdapterRequest = await _read(request, LoadAdapterRequest)
        adapters.load(body.lora_name, body.lora_path)
        return Response(f"adapter {body.lora_name!r} loaded", media_type="text/plain")

    @router.post("/unload_lora_adapter", response_class=Response, responses=adapter_answers,
                 openapi_extra=request_body(UnloadAdapterRequest))
    async def unload_lora_adapter(request: Request) -> Response:
        body: UnloadAdapterRequest = await _read(request, UnloadAdapterRequest)
        adapters.unload(body.lora_name)
        return Response(f"adapter {body.lora_name!r} unloaded", media_type="text/plain")

    generation_errors = errors(400, 404, 408, 413, 415, 429, 503)

    @router.post("/completions", response_class=Response, responses={**generated(openapi.Completion),
                 **generation_errors}, openapi_extra=request_body(CompletionRequest))  # fmt: skip
    async def completions(request: Request) -> Response:
        body: CompletionRequest = await _read(request, CompletionRequest)
        lora = adapters.resolve(body.model)
        params = body.sampling_params(limits)
        prompt = body.prompt_input()
        token_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else _checked_ids(prompt, tokenizer)
        run = _start(state, token_ids, params, body, "cmpl", "prompt", lora)
        if body.stream:
            return _sse(_stream_completion(run, body.model, body.include_usage))
        await _unless_disconnected(request, _consume(run))
        return JSONResponse(responses.completion_body(run, body.model))

    @router.post("/chat/completions", response_class=Response, responses={**generated(openapi.ChatCompletion),
                 **generation_errors}, openapi_extra=request_body(ChatCompletionRequest))  # fmt: skip
    async def chat_completions(request: Request) -> Response:
        body: ChatCompletionRequest = await _read(request, ChatCompletionRequest)
        lora = adapters.resolve(body.model)
        use = body.tool_use()
        params = body.sampling_params(limits, tool_format.constraint(use) if use is not None else None)
        try:
            text = tokenizer.apply_chat_template(body.conversation(tool_format, use), body.add_generation_prompt)
        except ValueError as exc:
            raise bad_request(str(exc), "messages") from exc
        run = _start(state, tokenizer.encode(text), params, body, "chatcmpl", "messages", lora)
        calls_in = tool_format if use is not None else None  # the answers are parsed for calls
        if body.stream:
            return _sse(_stream_chat(run, body.model, body.include_usage, calls_in))
        await _unless_disconnected(request, _consume(run))
        return JSONResponse(responses.chat_body(run, body.model, calls_in))

    return router


def _checked_ids(token_ids: list[int], tokenizer: Tokenizer) -> list[int]:
    bad = [t for t in token_ids if not 0 <= t < tokenizer.vocab_size]
    if bad:
        raise bad_request(f"token id {bad[0]} is outside the vocabulary (0..{tokenizer.vocab_size - 1})", "prompt")
    return token_ids


def _start(
    state: ServerState, token_ids: list[int], params: SamplingParams, body: CompletionRequest | ChatCompletionRequest,
    kind: str, param: str, lora: LoRARequest | None = None,
) -> RequestRun:
    if not state.engine.is_alive:
        raise APIError(503, "the engine is not running", "server_error", code="engine_dead")
    limit = state.engine.max_model_len
    if len(token_ids) >= limit:
        raise bad_request(f"the prompt has {len(token_ids)} tokens; the context holds {limit}, "
                          f"leaving no room to generate", param)
    run = RequestRun(state, token_ids, params, body.priority, kind, body.cache_salt, lora)
    run.admit()
    return run


async def _consume(run: RequestRun) -> None:
    async with aclosing(run.deltas()) as deltas:
        async for _ in deltas:
            pass


async def _unless_disconnected(request: Request, work: Awaitable[None]) -> None:
    """Runs work unless the client goes away first; then cancels it (which aborts the request)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)  # let the abort run before leaving
    if task.cancelled():
        raise APIError(499, "the client closed the connection", code="client_closed")
    task.result()  # re-raises an APIError for the client


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _stream_completion(run: RequestRun, model: str, include_usage: bool) -> AsyncIterator[str]:
    offsets = [0] * run.params.n
    try:
        async with aclosing(run.deltas()) as deltas:
            async for delta in deltas:
                for c in delta.completions:
                    if not responses.is_empty(c):
                        yield responses.sse(responses.completion_chunk(run, model, c, offsets[c.index]))
                        offsets[c.index] += len(c.text)
        if include_usage:
            yield responses.sse(responses.usage_chunk(run, model, "text_completion"))
    except APIError as exc:
        yield responses.sse(exc.body())
    yield responses.sse("[DONE]")


async def _stream_chat(run: RequestRun, model: str, include_usage: bool, tool_format: ToolCallFormat | None,
                       ) -> AsyncIterator[str]:  # fmt: skip
    chat_deltas = responses.ChatDeltas(run.params.n, tool_format)
    try:
        for index in range(run.params.n):
            yield responses.sse(responses.chat_chunk(run, model, index, {"role": "assistant", "content": ""}, None))
        async with aclosing(run.deltas()) as deltas:
            async for delta in deltas:
                for c in delta.completions:
                    if responses.is_empty(c):
                        continue
                    chunk_delta, finish_reason = chat_deltas.delta(c)
                    if chunk_delta or finish_reason is not None or c.logprobs:
                        yield responses.sse(responses.chat_chunk(run, model, c.index, chunk_delta, c, finish_reason))
        if include_usage:
            yield responses.sse(responses.usage_chunk(run, model, "chat.completion.chunk"))
    except APIError as exc:
        yield responses.sse(exc.body())
    yield responses.sse("[DONE]")


class BodySizeLimit:
    """Refuses request bodies over max_bytes with a 413, by header or as they stream in."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"the request body exceeds {self.max_bytes} bytes", code="request_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await too_large.response()(scope, receive, send)
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large
            return message

        await self.app(scope, limited_receive, send)
