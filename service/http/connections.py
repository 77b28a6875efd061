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
  Probes (``PROBES``: /healthz, /readyz, the protocol's health routes) are never refused by the cap:
  an orchestrator that cannot reach them would restart a server that is only busy.
* **client gone**: reading resumes once a request's body is complete, so the end of a client that left
  is seen while its request is processed (``context.client_gone``), after a large body too.
* **send deadline**: once an answer fills the transport's buffer (asyncio's ``pause_writing``), the
  client must take it within ``write_timeout_s``; a client that does not read is cut off
  (``transport.abort()``: the buffered answer is freed at once, the route's next ``send`` finds the
  client gone). The same sweep finds them.
* **bounded heads** (``HeadLimits``): httptools (llhttp) and uvicorn bound nothing in a request's
  head: a header value or URL streamed in pieces is joined piece by piece (``bytes +=``, quadratic),
  and an endless stream of header lines grows uvicorn's list until the read deadline. Here the URL's
  pieces are kept in a list (joined once: linear) and counted as they arrive (414 beyond
  ``max_url_bytes``); each header is counted as the parser completes it (431 beyond
  ``max_header_count`` headers or ``max_header_bytes`` bytes); and the bytes received while a head is
  incomplete are counted per read, so that a single header value without end (which httptools
  accumulates before any callback) is cut at the same bound. Each refusal closes the connection.

The hooks used: httptools' protocol callbacks (``on_url``, ``on_header``, ``on_headers_complete``,
public), asyncio's ``data_received``, ``pause_writing`` and ``resume_writing``, and uvicorn internals
(``_start_asgi_task``, ``send_400_response``, ``on_headers_complete`` reading ``self.url``, the
cycle's flags, ``connection_lost`` releasing a blocked send);
``tests/reliability/test_uvicorn_hooks.py`` fails the build when uvicorn changes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core.context import new_id
from service.http.errors import ErrorForms

Event = Callable[[str], None]  # counts a connection-level refusal by reason
PROBES = frozenset({b"/healthz", b"/readyz", b"/v2/health/live", b"/v2/health/ready"})  # answered beyond the cap
SWEEP_S = 0.25  # how often late requests are looked for


def _raw_error(forms: ErrorForms, status: int, reason: bytes, path: str, code: str, message: str,
               extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection, in the form of the protocol ``path`` is under
    (no route has taken the request yet)."""
    rid = new_id()
    body = forms.of(path).render(status, code, message, rid, logged=False)
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
            b"x-request-id: %s\r\nx-content-type-options: nosniff\r\ncache-control: no-store\r\n%s\r\n"
            % (status, reason, len(body), rid.encode(), extra)) + body


@dataclass(frozen=True)
class HeadLimits:
    """Bounds of a request's head (the settings of the same names)."""

    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    max_url_bytes: int = 8 * 1024


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the answer is in the protocol's ``_refusal``."""


def guarded_protocol(read_timeout_s: float, max_connections: int, retry_after_s: int, on_event: Event,
                     head: HeadLimits = HeadLimits(), write_timeout_s: float = 30.0, *,
                     forms: ErrorForms) -> type:
    """An httptools protocol class with these limits (uvicorn's ``Config(http=...)`` takes a class); its
    refusals answer in the form ``forms`` (the app's ``ErrorForms``) finds for their path."""

    head_bytes_limit = head.max_header_bytes + head.max_url_bytes + 64  # a whole head: request line and headers
    sweep_s = min(SWEEP_S, read_timeout_s / 4, write_timeout_s / 4)
    late_after = read_timeout_s - sweep_s
    sweeping: set[asyncio.AbstractEventLoop] = set()

    def sweep(loop: asyncio.AbstractEventLoop, connections: set) -> None:
        now = loop.time()
        for conn in list(connections):
            since = getattr(conn, "_since", None)
            if since is not None and now - since > late_after:
                conn._expired()
            blocked = getattr(conn, "_blocked_since", None)
            if blocked is not None and now - blocked > write_timeout_s:
                conn._write_expired()
        loop.call_later(sweep_s, sweep, loop, connections)

    class GuardedHttpTools(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._over_cap = len(self.connections) > max_connections
            self._refusing = False  # this request is refused by the cap (over it, and not a probe)
            self._receiving = False  # between a request's first byte and its last
            self._headers_done = False
            self._since: float | None = self.loop.time()  # the first request's deadline runs from here
            self._in_head = False  # between a request's first byte and the end of its headers
            self._head_read = 0  # bytes received while the head was incomplete (reads that began it excepted)
            self._url_parts: list[bytes] = []
            self._url_bytes = self._header_bytes = self._header_count = 0
            self._refusal: bytes | None = None  # the answer that refused this connection's request
            self._blocked_since: float | None = None  # when the transport's buffer went over its high-water mark
            if self.loop not in sweeping:  # one sweep per server's loop, started by its first connection
                sweeping.add(self.loop)
                self.loop.call_later(sweep_s, sweep, self.loop, self.connections)

        def connection_lost(self, exc: Exception | None) -> None:
            self._since = self._blocked_since = None
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._blocked_since = self.loop.time()

        def resume_writing(self) -> None:
            super().resume_writing()
            self._blocked_since = None

        def _write_expired(self) -> None:
            self._blocked_since = None
            on_event("write_timeout")
            self.transport.abort()  # drops the buffered answer; connection_lost tells the route the client is gone

        def data_received(self, data: bytes) -> None:
            if self._refusal is not None:  # refused and closing: read nothing more
                return
            began = self._in_head
            super().data_received(data)
            if began and self._in_head and self._refusal is None:  # a whole read of the same incomplete head
                self._head_read += len(data)
                if self._head_read > head_bytes_limit:
                    self._refuse(431, b"Request Header Fields Too Large", "headers_too_large",
                                 f"the request's head exceeds {head_bytes_limit} bytes (max_header_bytes + max_url_bytes)")
                    self.transport.write(self._refusal)
                    self.transport.close()

        def send_400_response(self, msg: str) -> None:
            if self._refusal is None:  # a malformed request: uvicorn's own 400
                super().send_400_response(msg)
                return
            self.transport.write(self._refusal)  # a callback of ours stopped the parser
            self.transport.close()

        def _refuse(self, status: int, reason: bytes, code: str, message: str) -> None:
            self._refusal = _raw_error(forms, status, reason, "", code, message)
            self._since = None
            on_event(code)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._receiving, self._headers_done = True, False
            self._in_head, self._head_read = True, 0
            self._url_parts = []
            self._url_bytes = self._header_bytes = self._header_count = 0
            if self._since is None:
                self._since = self.loop.time()

        def on_url(self, url: bytes) -> None:  # uvicorn's is ``self.url += url``: quadratic in pieces
            self._url_bytes += len(url)
            if self._url_bytes > head.max_url_bytes:
                self._refuse(414, b"URI Too Long", "url_too_long",
                             f"the request target exceeds {head.max_url_bytes} bytes (max_url_bytes)")
                raise _Refused
            self._url_parts.append(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            self._header_bytes += len(name) + len(value) + 4
            if self._header_count > head.max_header_count:
                self._refuse(431, b"Request Header Fields Too Large", "headers_too_large",
                             f"the request has more than {head.max_header_count} header lines (max_header_count)")
                raise _Refused
            if self._header_bytes > head.max_header_bytes:
                self._refuse(431, b"Request Header Fields Too Large", "headers_too_large",
                             f"the request's headers exceed {head.max_header_bytes} bytes (max_header_bytes)")
                raise _Refused
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._headers_done, self._in_head = True, False
            self.url = b"".join(self._url_parts)  # what uvicorn's on_headers_complete parses
            self._url_parts = []
            self._refusing = self._over_cap and self.url.partition(b"?")[0] not in PROBES
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refusing:  # an over-cap request's body is read and dropped
                super().on_body(body)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            # uvicorn pauses reading while a body is over its high-water mark and resumes only in the next
            # receive(), which a route that has its whole body never calls: reading stayed paused, so a client
            # that left was never noticed (no EOF read) while its request was processed. A pipelined request
            # pauses reading again (uvicorn), so reading on costs nothing more than the head limits allow.
            self.flow.resume_reading()
            self._receiving = False
            self._since = None
            if self._refusing:
                self._refuse_over_cap()

        def _start_asgi_task(self, cycle, app) -> None:
            if self._refusing:  # the app never sees it; answered once the body is read
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
                self.transport.write(_raw_error(forms, 408, b"Request Timeout", path, "read_timeout", message))
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
            self.transport.write(_raw_error(forms, 503, b"Service Unavailable", path, "too_many_connections", message, retry))
            on_event("too_many_connections")
            self.transport.close()

    return GuardedHttpTools
