"""``RequestGate``: the one pure-ASGI middleware every request passes, the fast path included.

In order: a request id (``X-Request-ID`` accepted or made; returned, logged, in error bodies); headers
that could be read two ways (a repeated Content-Length, Content-Type, ... or a Content-Length that is
not plain ASCII digits) answered 400 before any route sees them; the API key (``service.http.auth``); the
body-size limit (declared or streamed bytes -> 413); request metrics (route template, model, status,
latency) and the in-flight count; ``X-Content-Type-Options: nosniff`` on every answer and
``Cache-Control: no-store`` on every answer but the page's static files; ``Connection: close`` while
draining (so that no idle keep-alive connection is left for the shutdown to cut under a request in
flight). An exception no route handled becomes the generic 500 here, its details in the log under
the request id.

One layer rather than several: each ASGI layer costs event-loop time on every request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request

from service.core.context import RequestContext, accept_id, enter, leave
from service.http.auth import CHALLENGE, Access
from service.core.errors import BodyTooLarge
from service.http.errors import ErrorForms, Rejected, answer, error_response

if TYPE_CHECKING:
    from service.core.state import ServiceState

log = logging.getLogger(__name__)

MODEL_KEY = "rbn.model"  # scope key a route sets to the (known) model name it served
REQUEST_ID_KEY = "rbn.request_id"  # scope key holding the request's id
UNMATCHED = "unmatched"

# Headers whose second copy would let two readers (a proxy, the server, a route) disagree.
_SINGLE = frozenset({b"content-length", b"content-type", b"content-encoding", b"transfer-encoding",
                     b"inference-header-content-length", b"authorization", b"host"})
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")
_CLOSE = (b"connection", b"close")



def gone_check(receive) -> Callable[[], bool] | None:
    """A zero-cost "has the client disconnected?" for uvicorn's ``receive`` (its request cycle's flag),
    None for other servers."""
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not hasattr(cycle, "disconnected"):
        return None
    return lambda: cycle.disconnected


class RequestGate:
    """The gate (this module's docstring); ``forms`` says in which protocol's form it refuses a request."""

    def __init__(self, app, state: ServiceState, access: Access, on_reject: Rejected, forms: ErrorForms) -> None:
        self.app = app
        self.state = state
        self.access = access
        self.on_reject = on_reject
        self.forms = forms
        self._routes_read = False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._routes_read:  # every route exists by the first request: a page's static mounts stay open
            self.access.open_static_mounts(scope["app"].routes)
            self._routes_read = True
        state = self.state
        headers = scope["headers"]
        problem = None
        found = dict(headers)  # the last copy of each name
        given_id = found.get(b"x-request-id")
        if len(found) != len(headers):  # a repeated header (rare): is it one that must not repeat?
            names = [key for key, _ in headers]
            problem = _repeated(names)
            if names.count(b"x-request-id") > 1:  # a proxy may have appended its own: the client's is first
                given_id = next(value for key, value in headers if key == b"x-request-id")
        authorization = found.get(b"authorization")
        declared = found.get(b"content-length")
        request_id = accept_id(given_id)
        scope[REQUEST_ID_KEY] = request_id
        context = RequestContext(request_id, client_gone=gone_check(receive))
        token = enter(context)
        extra = [(b"x-request-id", request_id.encode("ascii")), _NOSNIFF]
        if not self.access.is_static(scope["path"]):  # the page's files may be cached (they revalidate by ETag)
            extra.append(_NO_STORE)
        status = 500
        started = False

        async def gated_send(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", ()), *extra]
                if state.phase == "draining":  # no keep-alive while draining: clients reconnect (elsewhere)
                    message["headers"].append(_CLOSE)
            await send(message)

        if problem is None and declared is not None and not (declared.isdigit() and declared.isascii()):
            problem = "Content-Length must be ASCII digits"
        if problem is None and declared is not None and b"transfer-encoding" in found:
            problem = "Content-Length and Transfer-Encoding together are ambiguous; send one"

        limit = state.settings.max_body_bytes
        received = 0
        checked = False

        async def limited_receive():
            nonlocal received, checked
            if not checked:
                checked = True
                if declared is not None and int(declared) > limit:
                    raise BodyTooLarge(f"request body of {int(declared)} bytes exceeds the limit of {limit}")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        start = time.perf_counter()
        state.in_flight += 1
        try:
            needs_key = self.access.required and not self.access.is_open(scope["path"])
            if problem is not None:
                await self._refuse(scope, gated_send, 400, "bad_header", problem)
            elif needs_key and not self.access.allows(authorization):
                message = "this route needs an API key: send Authorization: Bearer <key>"
                if authorization is not None:
                    message = "the API key is not accepted: send Authorization: Bearer <key> with a current key"
                await self._refuse(scope, gated_send, 401, "unauthorized", message, {"WWW-Authenticate": CHALLENGE})
            else:
                if needs_key:
                    context.principal = "api_key"
                await self.app(scope, limited_receive, gated_send)
        except Exception as exc:
            if started:
                raise
            log.exception("%s %s failed", scope["method"], scope["path"])
            request = Request(scope, receive)
            await answer(request, exc, self.on_reject, self.forms)(scope, receive, gated_send)
        finally:
            state.in_flight -= 1
            leave(token)
            route = scope.get("route")
            state.metrics.observe_request(
                route.path if route is not None else UNMATCHED, scope.get(MODEL_KEY, ""), status, time.perf_counter() - start
            )

    async def _refuse(self, scope, send, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.on_reject(Request(scope), status, code)
        await error_response(self.forms.of_scope(scope), status, code, message, headers)(scope, None, send)


def _repeated(names: list[bytes]) -> str | None:
    """The message for a header in ``_SINGLE`` that appears more than once, else None."""
    for name in _SINGLE:
        if names.count(name) > 1:
            return f"header {name.decode('latin-1')} is repeated; send it once"
    return None
