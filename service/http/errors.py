"""Core errors rendered as HTTP answers: the one exception -> response function and its FastAPI handler.

Our routes answer ``{"error": {"code": ..., "message": ...}}``; the Open Inference Protocol routes
(``/v2/...``) answer the protocol's ``{"error": message}``.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from service.core import context
from service.core.errors import CLIENT_CLOSED, ServiceError

Rejected = Callable[[Request, int, str], None]  # (request, status, code): counts a rejection

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_response(path: str, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error answer on ``path``: the Open Inference Protocol's form under /v2, ours elsewhere; ours
    carries the request id (``service.core.context``), and so does a /v2 server error's message."""
    request_id = context.request_id()
    if is_v2(path):
        body: dict = {"error": f"{message} (request id {request_id})" if status >= 500 and request_id else message}
    else:
        body = {"error": {"code": code, "message": message}}
        if request_id is not None:
            body["error"]["request_id"] = request_id
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def classify(request: Request, exc: BaseException) -> tuple[int, str, str, dict[str, str] | None]:
    """Any exception a request raised -> (status, code, message, headers) of its answer."""
    path = request.url.path
    if isinstance(exc, ServiceError):
        return exc.status, exc.code, exc.message, exc.headers
    if isinstance(exc, RequestValidationError):
        return (400 if is_v2(path) else 422), "invalid_argument", _validation_message(exc), None
    if isinstance(exc, StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and request.scope.get("route") is None:
            message = f"no route {request.method} {path}; see /docs"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {path}"
        return exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), message, getattr(exc, "headers", None)
    if isinstance(exc, ClientDisconnect):
        # The client went away mid-upload: its fault, not ours (no 5xx, no traceback).
        return CLIENT_CLOSED, "client_disconnected", "the client closed the connection", None
    return 500, "internal", "internal server error; see the server log", None


def answer(request: Request, exc: BaseException, on_reject: Rejected) -> Response:
    """The one exception -> response function, for FastAPI's handlers and the fast path alike:
    counts the rejection and answers in the protocol's error form."""
    status, code, message, headers = classify(request, exc)
    on_reject(request, status, code)
    return error_response(request.url.path, status, code, message, headers)


def install(app: FastAPI, on_reject: Rejected) -> None:
    """Route every exception FastAPI sees to ``answer``; ``on_reject`` counts rejections."""

    async def handler(request: Request, exc: Exception) -> Response:
        return answer(request, exc, on_reject)

    for kind in (ServiceError, RequestValidationError, StarletteHTTPException, ClientDisconnect, Exception):
        app.add_exception_handler(kind, handler)
