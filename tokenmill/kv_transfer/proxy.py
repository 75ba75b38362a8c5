"""`tokenmill disagg-proxy`: one OpenAI-compatible address in front of a prefill instance and a
decode instance (`tokenmill serve --kv-role prefill|decode`).

Each completion request goes first to the prefill instance, as it is but with max_tokens 1, not
streamed, and `kv_transfer_params: {"do_remote_decode": true}`; its answer names where the
prompt's KV waits. The request then goes to the decode instance with those params, which pulls
the KV and decodes, and its answer (streamed or not) is the client's. If the prefill instance
fails or cannot be reached, the request goes to the decode instance alone, which prefills it
itself: a prefill instance that dies costs speed, never a request. Other routes (models, health,
metrics) are the decode instance's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from tokenmill.server.errors import passed_headers

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ProxyConfig:
    prefill_url: str
    decode_url: str
    prefill_timeout_s: float = 600.0


def build_app(config: ProxyConfig) -> FastAPI:
    client = httpx.AsyncClient(timeout=None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(title="tokenmill disagg-proxy", lifespan=lifespan)

    async def generation(request: Request) -> Response:
        path, headers = request.url.path, passed_headers(request)
        body = await request.json()
        params = await _prefill(client, config, path, body, headers)
        decode_body = body if params is None else {**body, "kv_transfer_params": params}
        url = config.decode_url + path
        if not body.get("stream"):
            answer = await client.post(url, json=decode_body, headers=headers)
            return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))
        upstream = await client.send(client.build_request("POST", url, json=decode_body, headers=headers), stream=True)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(chunks(), upstream.status_code, media_type=upstream.headers.get("content-type"))

    async def passthrough(request: Request) -> Response:
        answer = await client.get(config.decode_url + request.url.path, headers=passed_headers(request))
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

    for route in ("/v1/completions", "/v1/chat/completions"):
        app.add_api_route(route, generation, methods=["POST"])
    for route in ("/v1/models", "/health", "/metrics"):
        app.add_api_route(route, passthrough, methods=["GET"])
    return app


async def _prefill(client: httpx.AsyncClient, config: ProxyConfig, path: str, body: dict,
                   headers: dict[str, str]) -> dict | None:  # fmt: skip
    """The prefill instance's kv_transfer_params for the request, or None (it failed, or the
    request is one it cannot prefill for another instance: n > 1)."""
    if not isinstance(body, dict) or body.get("n", 1) != 1:
        return None
    prefill = {k: v for k, v in body.items() if k not in ("stream_options", "max_completion_tokens")}
    prefill.update(max_tokens=1, stream=False, kv_transfer_params={"do_remote_decode": True})
    try:
        answer = await client.post(config.prefill_url + path, json=prefill, headers=headers,
                                   timeout=config.prefill_timeout_s)  # fmt: skip
    except httpx.HTTPError as exc:
        logger.warning("prefill instance unreachable (%s): the decode instance prefills", exc)
        return None
    if answer.status_code != 200:
        if answer.status_code >= 500:
            logger.warning("prefill instance answered %d: the decode instance prefills", answer.status_code)
        return None  # a 4xx: the decode instance gives the client the same answer
    return answer.json().get("kv_transfer_params")


def serve_proxy(config: ProxyConfig, host: str, port: int, drain_timeout_s: float = 30.0) -> None:
    from tokenmill.server.serve import run_app

    logger.info("disagg-proxy on %s:%d: prefill %s, decode %s", host, port, config.prefill_url, config.decode_url)
    run_app(build_app(config), host, port, drain_timeout_s, "warning")
