"""Core errors rendered as HTTP answers: each protocol's error form, the one exception -> response
function and its FastAPI handler.

Our routes answer ``{"error": {"code": ..., "message": ...}}``; the Open Inference Protocol's routes answer
the protocol's ``{"error": message}``. A protocol's router declares its form (``route_class(OIP)``), so the
route that takes a request decides its form (ours where it declares none). A request that no route has taken
yet (refused by the gate, or by the connection once its URL is read: 408, 503) or that none takes (404) gets
the form of the router whose prefix holds its path (``ErrorForms``): the router's own declaration, not a path
written here. A request refused before its URL is whole (414, 431) gets ours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from service.core import context
from service.core.errors import CLIENT_CLOSED, ServiceError

Rejected = Callable[[Request, int, str], None]  # (request, status, code): counts a rejection

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}


def _our_body(status: int, code: str, message: str, request_id: str | None, logged: bool) -> dict:
    error = {"code": code, "message": message}
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def _oip_body(status: int, code: str, message: str, request_id: str | None, logged: bool) -> dict:
    # The protocol's error is one string: a server error's message names the request id to look up in the log.
    return {"error": f"{message} (request id {request_id})" if status >= 500 and request_id and logged else message}


@dataclass(frozen=True)
class ErrorForm:
    """How one protocol writes an error: its body, and the status of a request its schema refuses."""

    name: str
    body: Callable[[int, str, str, str | None, bool], dict]  # (status, code, message, request id, logged) -> JSON
    invalid_status: int  # a body or parameter that fails the route's schema

    def render(self, status: int, code: str, message: str, request_id: str | None, logged: bool = True) -> bytes:
        """The JSON body; ``logged``: the server's log has lines under ``request_id`` (a connection's own
        refusal, made before any route, writes none)."""
        return orjson.dumps(self.body(status, code, message, request_id, logged))


OURS = ErrorForm("rbn-serve", _our_body, 422)
OIP = ErrorForm("open inference protocol", _oip_body, 400)


def route_class(form: ErrorForm) -> type[APIRoute]:
    """The route class of a router whose routes answer errors in ``form``: ``APIRouter(route_class=...)``."""
    return type(f"{form.name.title().replace(' ', '').replace('-', '')}Route", (APIRoute,), {"error_form": form})


def declared_form(route: object) -> ErrorForm | None:
    """The form ``route``'s router declared, or None (a route of ours, or no route)."""
    return getattr(route, "error_form", None)


class ErrorForms:
    """The form of every request: the form its route declares, ours where the route declares none; for a
    request with no route, that of the declaring router whose prefix holds the path, else ours."""

    def __init__(self, routers: Iterable[APIRouter] = ()) -> None:
        self._prefixes = [(router.prefix, form) for router in routers
                          if router.prefix and (form := getattr(router.route_class, "error_form", None)) is not None]

    def of(self, path: str, route: object = None) -> ErrorForm:
        if route is not None:
            return declared_form(route) or OURS
        for prefix, form in self._prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return form
        return OURS

    def of_scope(self, scope) -> ErrorForm:
        return self.of(scope.get("path", ""), scope.get("route"))


def error_response(form: ErrorForm, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> Response:
    """An error answer in ``form``, carrying the request id (``service.core.context``) where the form has room."""
    body = form.render(status, code, message, context.request_id())
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def classify(request: Request, exc: BaseException, form: ErrorForm = OURS) -> tuple[int, str, str, dict[str, str] | None]:
    """Any exception a request raised -> (status, code, message, headers) of its answer in ``form``."""
    path = request.url.path
    if isinstance(exc, ServiceError):
        return exc.status, exc.code, exc.message, exc.headers
    if isinstance(exc, RequestValidationError):
        return form.invalid_status, "invalid_argument", _validation_message(exc), None
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


def answer(request: Request, exc: BaseException, on_reject: Rejected, forms: ErrorForms) -> Response:
    """The one exception -> response function, for FastAPI's handlers, the gate and the fast path alike:
    counts the rejection and answers in the request's error form."""
    form = forms.of_scope(request.scope)
    status, code, message, headers = classify(request, exc, form)
    on_reject(request, status, code)
    return error_response(form, status, code, message, headers)


def install(app: FastAPI, on_reject: Rejected, forms: ErrorForms) -> None:
    """Route every exception FastAPI sees to ``answer``; ``on_reject`` counts rejections."""

    async def handler(request: Request, exc: Exception) -> Response:
        return answer(request, exc, on_reject, forms)

    for kind in (ServiceError, RequestValidationError, StarletteHTTPException, ClientDisconnect, Exception):
        app.add_exception_handler(kind, handler)
