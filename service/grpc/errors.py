"""Core errors rendered as gRPC status codes: the one exception -> (code, message, trailing metadata) function."""

from __future__ import annotations

import asyncio

import grpc

from service.core.errors import CLIENT_CLOSED, ServiceError

# By the core error's status (each core error carries one, with a stable code); the codes the protocol's
# clients expect: Triton answers UNAVAILABLE for a full queue, INVALID_ARGUMENT for a bad tensor.
_BY_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CLIENT_CLOSED: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Where the stable code says more than the status.
_BY_CODE = {"deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED, "unauthorized": grpc.StatusCode.UNAUTHENTICATED}

INTERNAL_MESSAGE = "internal server error; see the server log"


def classify(exc: BaseException) -> tuple[int, str, str, dict[str, str]]:
    """Any exception an RPC raised -> (status, stable code, message, extra headers), as the HTTP side
    classifies it: the status and code feed the metrics, the message goes to the client."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.code, exc.message, exc.headers
    if isinstance(exc, asyncio.CancelledError):
        return CLIENT_CLOSED, "client_disconnected", "the client cancelled the call", {}
    return 500, "internal", INTERNAL_MESSAGE, {}


def grpc_status(status: int, code: str) -> grpc.StatusCode:
    """The gRPC status code for a core error's (status, stable code)."""
    found = _BY_CODE.get(code)
    if found is not None:
        return found
    found = _BY_STATUS.get(status)
    if found is not None:
        return found
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


def render(exc: BaseException, request_id: str) -> tuple[int, str, grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The one exception -> answer function of the gRPC front end: (status, code) for the metrics, then
    the gRPC status code, the message (the HTTP side's own; a server error's names the request id, as
    on /v2) and the trailing metadata (the request id, and Retry-After where the core set one)."""
    status, code, message, headers = classify(exc)
    if status >= 500:
        message = f"{message} (request id {request_id})"
    trailing = [("x-request-id", request_id)]
    trailing += [(name.lower(), value) for name, value in headers.items() if name.lower() != "www-authenticate"]
    return status, code, grpc_status(status, code), message, tuple(trailing)
