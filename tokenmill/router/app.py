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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import anyio
import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException

import tokenmill
from tokenmill.router.backends import Backend, BackendPool
from tokenmill.router.cache.replay import StreamCapture, wants_usage, with_usage
from tokenmill.router.cache.response_cache import CACHE_HEADER, CachePlan, ResponseCache
from tokenmill.router.cascade import cascade
from tokenmill.router.config import RouterConfig
from tokenmill.router.metrics import RouterMetrics
from tokenmill.router.policies import RouteRequest, make_policy
from tokenmill.server.errors import APIError, api_key_check, bad_request, http_error, passed_headers

logger = logging.getLogger(__name__)

def build_app(config: RouterConfig) -> FastAPI:
    client = httpx.AsyncClient(timeout=httpx.Timeout(config.request_timeout_s, connect=5.0))
    pool, policy, metrics = BackendPool(config, client), make_policy(config), RouterMetrics()
    cache = ResponseCache.build(config.cache)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if cache is not None:
            await cache.start()
        await pool.check_all()
        checks = asyncio.create_task(pool.run_checks())
        yield
        checks.cancel()
        with suppress(asyncio.CancelledError):
            await checks
        await client.aclose()
        if cache is not None:
            await cache.close()

    app = FastAPI(title="tokenmill router", version=tokenmill.__version__, lifespan=lifespan)
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
        answers = await asyncio.gather(*(client.get(f"{b.url}/v1/models", headers=passed_headers(request), timeout=5)
                                         for b in healthy), return_exceptions=True)  # fmt: skip
        seen: dict[str, dict] = {}
        for answer in answers:
            if isinstance(answer, httpx.Response) and answer.status_code == 200:
                with suppress(ValueError, KeyError, TypeError, AttributeError):  # a backend's odd answer: skipped
                    for model in answer.json()["data"]:
                        seen.setdefault(model["id"], model)
        if config.cascade is not None and {config.cascade.small, config.cascade.large} <= seen.keys():
            seen[config.cascade.name] = {"id": config.cascade.name, "object": "model", "owned_by": "tokenmill-router",
                                         "created": seen[config.cascade.large].get("created")}  # fmt: skip
        return {"object": "list", "data": list(seen.values())}

    async def generation(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        plan = cache.plan(request.url.path, body, request.headers.get(CACHE_HEADER)) if cache is not None else None
        if plan is not None:
            hit = await cache.lookup(plan)
            metrics.cache_lookups.labels(hit.kind if hit is not None else "miss").inc()
            if hit is not None:
                return hit.response(body)
        headers, path = passed_headers(request), request.url.path
        keeper = _Keeper(cache, plan, metrics) if plan is not None else None

        async def forward(sent: dict, final: bool = True) -> Response:
            return await _route(sent, path, headers, request, keeper if final else None)

        if config.cascade is not None and body.get("model") == config.cascade.name:
            answer, outcome = await cascade(config.cascade, body, forward)
            metrics.count_cascade(outcome)
            if keeper is not None and outcome.small_answer is not None:
                await keeper.keep(outcome.small_answer)
        else:
            answer = await forward(body)
        if cache is not None:
            answer.headers[CACHE_HEADER] = "miss" if plan is not None else "bypass"
        return answer

    async def _route(body: dict, path: str, headers: dict[str, str], request: Request, keeper: _Keeper | None,
                     ) -> Response:  # fmt: skip
        """The answer of a backend chosen by the policy, retried on another while one fails before answering."""
        route = RouteRequest(_prompt_text(body), request.headers.get(config.session_header) or body.get("user"),
                             body.get("max_completion_tokens") or body.get("max_tokens"))
        tried: set[Backend] = set()
        while True:
            candidates = pool.candidates(body.get("model"), exclude=tried)
            if not candidates:
                raise _no_backend(body.get("model"), tried)
            backend = policy.choose(route, candidates)
            tried.add(backend)
            answer = await _send(client, _Exchange(backend, route, metrics), path, body, headers, keeper)
            if answer is not None:
                return answer
            pool.take_out(backend, "it failed before answering")
            metrics.retries.inc()

    for path in ("/v1/completions", "/v1/chat/completions"):
        v1.add_api_route(path, generation, methods=["POST"])
    app.include_router(public)
    app.include_router(v1)
    return app


class _Keeper:
    """Hands an answer that came back whole to the cache."""

    def __init__(self, cache: ResponseCache, plan: CachePlan, metrics: RouterMetrics) -> None:
        self.cache, self.plan, self.metrics = cache, plan, metrics

    async def keep(self, body: dict) -> None:
        if await self.cache.remember(self.plan, body):
            self.metrics.cache_stores.inc()


async def _send(client: httpx.AsyncClient, exchange: _Exchange, path: str, body: dict, headers: dict[str, str],
                keeper: _Keeper | None = None) -> Response | None:  # fmt: skip
    """The backend's answer, a stream passed through as it comes; None if the backend is down: no
    connection, a 502/503/504, or the connection lost before the answer's first byte. A backend
    too slow to answer gets the client a 504 and stays in (it is busy, not gone). With a keeper, an
    answer that comes back whole (streamed or not) is also cached."""
    backend, metrics = exchange.backend, exchange.metrics
    streamed = bool(body.get("stream"))
    capture = StreamCapture(pass_usage=wants_usage(body)) if keeper is not None and streamed else None
    try:
        sent = with_usage(body) if capture is not None else body  # a stream is put together with its usage
        request = client.build_request("POST", f"{backend.url}{path}", json=sent, headers=headers)
        upstream = exchange.response = await client.send(request, stream=True)
        metrics.requests.labels(backend.url, str(upstream.status_code)).inc()
        if upstream.status_code in (502, 503, 504):
            raise _BackendDown(f"it answered {upstream.status_code}")
        raw = upstream.aiter_raw()
        media_type = upstream.headers.get("content-type")
        if not streamed:  # whole, so that the client gets a Content-Length
            content = b"".join([chunk async for chunk in raw])
            await exchange.close()
            if keeper is not None and upstream.status_code == 200:
                with suppress(ValueError):  # an answer that is not JSON is passed on, not cached
                    await keeper.keep(json.loads(content))
            return Response(content, upstream.status_code, media_type=media_type)
        if capture is not None and upstream.status_code == 200:
            raw = capture.events(raw)
        first = await anext(raw)  # a stream has begun only once its first bytes are here
    except (httpx.ConnectTimeout, httpx.TransportError, StopAsyncIteration, _BackendDown) as exc:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            await exchange.close()
            return APIError(504, f"the backend did not answer in time: {exc!r}", "server_error",
                            code="backend_timeout").response()  # fmt: skip
        logger.warning("backend %s failed before answering: %r", backend.url, exc)
        await exchange.close()
        return None
    except BaseException:  # cancelled (the client left, or shutdown): nothing stays counted or open
        await exchange.close()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in raw:
                yield chunk
            if capture is not None and (whole := capture.body()) is not None:
                await keeper.keep(whole)
        except httpx.HTTPError as exc:  # begun: too late for another backend, so the stream ends in an error
            logger.warning("backend %s failed mid-stream: %r", backend.url, exc)
            error = APIError(502, f"the backend failed mid-stream: {exc}", "server_error", code="backend_failed")
            yield b"\n\ndata: " + json.dumps(error.body()).encode() + b"\n\n"

    return _PassedStream(chunks(), upstream.status_code, media_type, exchange)


class _BackendDown(Exception):
    pass


class _Exchange:
    """One request at one backend: in flight from its start until closed, once, however it ends.
    Its estimated prompt and output tokens count as the backend's load all that time (a chat
    stream's first bytes come before the prefill, so they cannot tell when the prompt is done)."""

    def __init__(self, backend: Backend, route: RouteRequest, metrics: RouterMetrics) -> None:
        self.backend, self.metrics, self.start = backend, metrics, time.monotonic()
        self.response: httpx.Response | None = None
        self.closed = False
        self.tokens = route.prompt_tokens + route.output_tokens
        backend.in_flight += 1
        backend.requests += 1
        backend.tokens_in_flight += self.tokens

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.backend.in_flight -= 1  # first: whatever happens to the await below
        self.backend.tokens_in_flight -= self.tokens
        self.metrics.latency.labels(self.backend.url).observe(time.monotonic() - self.start)
        if self.response is not None:
            with anyio.CancelScope(shield=True):  # a cancelled request still gives its connection back
                await self.response.aclose()


class _PassedStream(StreamingResponse):
    """A backend's stream passed on. Its exchange closes however the response ends: also when the
    client leaves before the stream starts, when the body's generator never runs."""

    def __init__(self, chunks: AsyncIterator[bytes], status: int, media_type: str | None, exchange: _Exchange) -> None:
        super().__init__(chunks, status, media_type=media_type)
        self.exchange = exchange

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.exchange.close()


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


def _no_backend(model: str | None, tried: set[Backend]) -> APIError:
    if tried:
        return APIError(503, f"every backend that serves {model!r} failed", "server_error", code="no_backend")
    return APIError(404 if model else 503, f"no healthy backend serves the model {model!r}",
                    "invalid_request_error" if model else "server_error", code="model_not_found")


def serve_router(config: RouterConfig, host: str, port: int, drain_timeout_s: float = 30.0) -> None:
    from tokenmill.server.serve import run_app

    logger.info("router on %s:%d, policy %s", host, port, config.policy)
    run_app(build_app(config), host, port, drain_timeout_s, "warning")
