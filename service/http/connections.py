"""The HTTP connection: uvicorn's httptools protocol plus the two limits uvicorn lacks.

uvicorn (0.54) closes idle keep-alive connections (``timeout_keep_alive``) and can answer 503 beyond
``limit_concurrency``, but it has no deadline for receiving a request: a client that opens a
connection and sends nothing, or trickles its headers or body a byte at a time, holds the
connection (and up to the body limit in memory) forever. And ``limit_concurrency`` keeps every
refused connection open and logs a warning per request. So, per connection:

* **read deadline**: from the connection opening (first request) or a request's first byte
  (later ones) until its headers and body are all received, at most ``read_timeout_s``; then a
  408 (or, when the answer has already started, nothing) and the connection is closed. Each
  connection notes when its request started; one sweep per server, every quarter second, closes
  the late ones, so a request is cut between ``read_timeout_s`` - 0.25 s and ``read_timeout_s``.
  (A timer per request costs about 7 us of event-loop time in uvloop, the sweep nothing per request.)
* **connection cap**: a request on a connection beyond ``max_connections`` is answered 503 with
  ``Retry-After`` once its body is read, then the connection is closed; it never reaches the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core.context import new_id
from service.http.errors import is_v2

Event = Callable[[str], None]  # counts a connection-level refusal by reason
SWEEP_S = 0.25  # how often late requests are looked for


def _raw_error(status: int, reason: bytes, path: str, code: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection, in the protocol's error form."""
    rid = new_id()
    body = orjson.dumps({"error": message} if is_v2(path) else {"error": {"code": code, "message": message, "request_id": rid}})
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
            b"x-request-id: %s\r\nx-content-type-options: nosniff\r\ncache-control: no-store\r\n%s\r\n"
            % (status, reason, len(body), rid.encode(), extra)) + body


def guarded_protocol(read_timeout_s: float, max_connections: int, retry_after_s: int, on_event: Event) -> type:
    """An httptools protocol class with these limits (uvicorn's ``Config(http=...)`` takes a class)."""

    sweep_s = min(SWEEP_S, read_timeout_s / 4)
    late_after = read_timeout_s - sweep_s
    sweeping: set[asyncio.AbstractEventLoop] = set()

    def sweep(loop: asyncio.AbstractEventLoop, connections: set) -> None:
        now = loop.time()
        for conn in list(connections):
            since = getattr(conn, "_since", None)
            if since is not None and now - since > late_after:
                conn._expired()
        loop.call_later(sweep_s, sweep, loop, connections)

    class GuardedHttpTools(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._over_cap = len(self.connections) > max_connections
            self._receiving = False  # between a request's first byte and its last
            self._headers_done = False
            self._since: float | None = self.loop.time()  # the first request's deadline runs from here
            if self.loop not in sweeping:  # one sweep per server's loop, started by its first connection
                sweeping.add(self.loop)
                self.loop.call_later(sweep_s, sweep, self.loop, self.connections)

        def connection_lost(self, exc: Exception | None) -> None:
            self._since = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._receiving, self._headers_done = True, False
            if self._since is None:
                self._since = self.loop.time()

        def on_headers_complete(self) -> None:
            self._headers_done = True
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._over_cap:  # an over-cap request's body is read and dropped
                super().on_body(body)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._receiving = False
            self._since = None
            if self._over_cap:
                self._refuse_over_cap()

        def _start_asgi_task(self, cycle, app) -> None:
            if self._over_cap:  # the app never sees it; answered once the body is read
                return
            super()._start_asgi_task(cycle, app)

        def _expired(self) -> None:
            self._since = None
            if self.transport.is_closing():
                return
            if not self._receiving:  # opened and never used: close without an answer nobody asked for
                self.transport.close()
                return
            cycle = self.cycle if self._headers_done else None  # else self.cycle is the previous request's
            if cycle is None or not cycle.response_started:
                path = self.scope.get("path", "") if self.scope else ""
                message = f"the request was not received within {read_timeout_s:g} s (read_timeout_s)"
                self.transport.write(_raw_error(408, b"Request Timeout", path, "read_timeout", message))
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the route's next receive() says the client is gone
                cycle.message_event.set()
            on_event("read_timeout")
            self.transport.close()

        def _refuse_over_cap(self) -> None:
            if self.transport.is_closing():
                return
            path = self.scope.get("path", "") if self.scope else ""
            message = f"the server holds its maximum of {max_connections} connections; retry later"
            retry = b"retry-after: %d\r\n" % retry_after_s
            self.transport.write(_raw_error(503, b"Service Unavailable", path, "too_many_connections", message, retry))
            on_event("too_many_connections")
            self.transport.close()

    return GuardedHttpTools
