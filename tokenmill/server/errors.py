"""OpenAI-style errors: {"error": {"message", "type", "param", "code"}} with a 4xx or 5xx status."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def api_key_check(api_key: str | None) -> Callable[[Request], None]:
    """A route dependency: with a key set, a request without 'Authorization: Bearer <key>' gets a 401.
    The comparison takes the same time wherever the first wrong byte is, so timing tells nothing."""
    expected = None if api_key is None else f"Bearer {api_key}".encode()

    def check(request: Request) -> None:
        if expected is not None and not hmac.compare_digest(request.headers.get("authorization", "").encode(),
                                                            expected):  # fmt: skip
            raise APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           "authentication_error", code="invalid_api_key")

    return check


def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in the OpenAI shape too."""
    # Its headers too: a 405 must say which methods the route has (Allow).
    return APIError(exc.status_code, str(exc.detail), "invalid_request_error", headers=exc.headers).response()


def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything unforeseen: a 500 in the OpenAI shape that names no file, line or value; the log has them."""
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return APIError(500, "the server failed to answer this request; its log has the details", "server_error",
                    code="internal_error").response()


def passed_headers(request: Request) -> dict[str, str]:
    """What a front that forwards a request (the router, the disaggregation proxy) passes on."""
    return {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "x-request-id")}
