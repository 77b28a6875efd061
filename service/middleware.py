"""One pure-ASGI middleware: request metrics (route template, model, status, latency), in-flight
count, and the body-size limit (declared Content-Length or streamed bytes -> 413). It only measures
and limits; the fast path (``service.fastpath``) is a middleware of its own, inside this one."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from service.errors import BodyTooLarge

if TYPE_CHECKING:
    from service.state import ServiceState

MODEL_KEY = "rbn.model"  # scope key a route sets to the (known) model name it served
UNMATCHED = "unmatched"


class ObserveRequests:
    def __init__(self, app, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        limit = state.settings.max_body_bytes
        status = 500
        received = 0
        checked = False

        async def limited_receive():
            nonlocal received, checked
            if not checked:
                checked = True
                for key, value in scope["headers"]:
                    if key == b"content-length" and value.isdigit() and int(value) > limit:
                        raise BodyTooLarge(f"request body of {int(value)} bytes exceeds the limit of {limit}")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        async def observed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        state.in_flight += 1
        try:
            await self.app(scope, limited_receive, observed_send)
        finally:
            state.in_flight -= 1
            route = scope.get("route")
            state.metrics.observe_request(
                route.path if route is not None else UNMATCHED, scope.get(MODEL_KEY, ""), status, time.perf_counter() - start
            )
