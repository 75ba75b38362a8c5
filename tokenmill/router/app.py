"""`tokenmill router`: one OpenAI-compatible address over many backends.

Each completion or chat request goes to one healthy backend that serves its model, chosen by the
policy (router/policies.py). A backend that fails before the answer's first byte (no connection,
or a 5xx) is taken out and the request goes to another; once a stream has begun it is never
retried. /v1/models is the union of the backends' models; /health is healthy while one backend is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

import tokenmill
from tokenmill.router.backends import Backend, BackendPool
from tokenmill.router.config import RouterConfig
from tokenmill.router.metrics import RouterMetrics
from tokenmill.router.policies import RouteRequest, make_policy
from tokenmill.server.errors import APIError, api_key_check, bad_request, http_error

logger = logging.getLogger(__name__)

_PASSED_HEADERS = ("authorization", "x-request-id")


def build_app(config: RouterConfig) -> FastAPI:
    client = httpx.AsyncClient(timeout=httpx.Timeout(config.request_timeout_s, connect=5.0))
    pool, policy, metrics = BackendPool(config, client), make_policy(config), RouterMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.check_all()
        checks = asyncio.create_task(pool.run_checks())
        yield
        checks.cancel()
        with suppress(asyncio.CancelledError):
            await checks
        await client.aclose()

    app = FastAPI(title="tokenmill router", version=tokenmill.__version__, lifespan=lifespan)
    app.state.pool = pool
    app.add_exception_handler(APIError, lambda request, exc: exc.response())
    app.add_exception_handler(HTTPException, http_error)
    public, v1 = APIRouter(), APIRouter(dependencies=[Depends(api_key_check(config.api_key))])

    @public.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if any(b.healthy for b in pool.backends.values()) else 503)

    @public.get("/version")
    async def version() -> dict:
        return {"version": tokenmill.__version__}

    @public.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(pool), media_type="text/plain; version=0.0.4")

    @v1.get("/v1/models")
    async def models(request: Request) -> dict:
        healthy = [b for b in pool.backends.values() if b.healthy]
        answers = await asyncio.gather(*(client.get(f"{b.url}/v1/models", headers=_headers(request))
                                         for b in healthy), return_exceptions=True)  # fmt: skip
        seen: dict[str, dict] = {}
        for answer in answers:
            if isinstance(answer, httpx.Response) and answer.status_code == 200:
                for model in answer.json().get("data", []):
                    seen.setdefault(model["id"], model)
        return {"object": "list", "data": list(seen.values())}

    async def generation(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        route = RouteRequest(_prompt_text(body), request.headers.get(config.session_header) or body.get("user"))
        tried: set[Backend] = set()
        while True:
            candidates = pool.candidates(body.get("model"), exclude=tried)
            if not candidates:
                raise _no_backend(body.get("model"), tried)
            backend = policy.choose(route, candidates)
            tried.add(backend)
            answer = await _send(client, backend, request.url.path, body, _headers(request), metrics)
            if answer is not None:
                return answer
            pool.take_out(backend, "it failed before answering")
            metrics.retries.inc()

    for path in ("/v1/completions", "/v1/chat/completions"):
        v1.add_api_route(path, generation, methods=["POST"])
    app.include_router(public)
    app.include_router(v1)
    return app


async def _send(client: httpx.AsyncClient, backend: Backend, path: str, body: dict, headers: dict[str, str],
                metrics: RouterMetrics) -> Response | None:  # fmt: skip
    """The backend's answer, a stream passed through as it comes; None if the backend failed before
    the answer's first byte (no connection, a 5xx, or the connection lost before any body)."""
    start = time.monotonic()
    backend.in_flight += 1
    backend.requests += 1
    upstream = None
    try:
        upstream = await client.send(client.build_request("POST", f"{backend.url}{path}", json=body, headers=headers),
                                     stream=True)  # fmt: skip
        metrics.requests.labels(backend.url, str(upstream.status_code)).inc()
        if upstream.status_code >= 500:
            raise _FailedBeforeFirstByte
        raw = upstream.aiter_raw()
        media_type = upstream.headers.get("content-type")
        if not body.get("stream"):  # whole, so that the client gets a Content-Length
            content = b"".join([chunk async for chunk in raw])
            await _close(upstream, backend, metrics, start)
            return Response(content, upstream.status_code, media_type=media_type)
        first = await anext(raw)  # a stream has begun only once its first bytes are here
    except (httpx.TransportError, StopAsyncIteration, _FailedBeforeFirstByte) as exc:
        logger.warning("backend %s failed before answering: %r", backend.url, exc)
        backend.in_flight -= 1
        if upstream is not None:
            await upstream.aclose()
        return None

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in raw:
                yield chunk
        except httpx.HTTPError as exc:  # begun: too late for another backend, so the stream ends in an error
            logger.warning("backend %s failed mid-stream: %r", backend.url, exc)
            error = APIError(502, f"the backend failed mid-stream: {exc}", "server_error", code="backend_failed")
            yield b"\n\ndata: " + json.dumps(error.body()).encode() + b"\n\n"
        finally:
            await _close(upstream, backend, metrics, start)

    return StreamingResponse(chunks(), upstream.status_code, media_type=media_type)


class _FailedBeforeFirstByte(Exception):
    pass


async def _close(upstream: httpx.Response, backend: Backend, metrics: RouterMetrics, start: float) -> None:
    await upstream.aclose()
    backend.in_flight -= 1
    metrics.latency.labels(backend.url).observe(time.monotonic() - start)


def _prompt_text(body: dict) -> str:
    """What prefix matching reads: the prompt, or every message's text content in order."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"{message.get('role', '')}:{content or ''}\n" if isinstance(message, dict) else "")
    return "".join(parts)


def _headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() in _PASSED_HEADERS}


def _no_backend(model: str | None, tried: set[Backend]) -> APIError:
    if tried:
        return APIError(503, f"every backend that serves {model!r} failed", "server_error", code="no_backend")
    return APIError(404 if model else 503, f"no healthy backend serves the model {model!r}",
                    "invalid_request_error" if model else "server_error", code="model_not_found")


def serve_router(config: RouterConfig, host: str, port: int, drain_timeout_s: float = 30.0) -> None:
    from tokenmill.server.serve import run_app

    logger.info("router on %s:%d over %d backends, policy %s", host, port, len(config.backends), config.policy)
    run_app(build_app(config), host, port, drain_timeout_s, "warning")
