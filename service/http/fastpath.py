"""The hot request, one raw image POSTed to /predict, answered without FastAPI's routing,
dependency and exception layers.

py-spy put those layers at about a quarter of the event loop's time per request; skipping them
took the event loop's CPU per request from 0.246 to 0.193 ms on the 2-core VM (BENCHMARKS.md,
bench/service_variants.py), CPU that ONNX Runtime's threads share. The answer is made by the same
route function, and errors by the same ``service.http.errors.answer``, as through FastAPI. It is the
innermost middleware, so every middleware added to the app wraps it too; a dependency on the route
or the app would be skipped, so building the stack refuses one. Multipart bodies, other routes and
other methods go on to FastAPI.
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect, Request
from starlette.routing import Route, Router

from service.http.routes import predict
from service.http.routes.uploads import is_raw_image
from service.core.errors import ServiceError
from service.http.errors import ErrorForms, Rejected, answer

log = logging.getLogger(__name__)

PATH = "/predict"


class RawPredict:
    """ASGI middleware: takes the requests it ``matches``, passes the others to ``app``."""

    def __init__(self, app, router: Router, on_reject: Rejected, forms: ErrorForms) -> None:
        self.app = app
        self.on_reject = on_reject
        self.forms = forms
        self.route = next(r for r in predict.router.routes if isinstance(r, Route) and r.path == PATH)
        dependencies = _dependencies(router, self.route)
        if dependencies:
            raise RuntimeError(f"{PATH} has dependencies {dependencies}; the fast path would skip them")

    @staticmethod
    def matches(scope) -> bool:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            return False
        for key, value in scope["headers"]:
            if key == b"content-type":
                return is_raw_image(value.decode("latin-1"))
        return False

    async def __call__(self, scope, receive, send) -> None:
        if not self.matches(scope):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # the metrics' route label (Starlette has already set scope["app"])
        request = Request(scope, receive)
        try:
            response = await predict.predict(request)
        except Exception as exc:
            if not isinstance(exc, (ServiceError, ClientDisconnect)):
                log.exception("POST %s failed", PATH)
            response = answer(request, exc, self.on_reject, self.forms)
        await response(scope, receive, send)


def _dependencies(app_router: Router, route: Route) -> list:
    """Every dependency FastAPI would run for ``route``: the app's, the include's, the router's, the route's."""
    found = list(getattr(app_router, "dependencies", None) or [])
    found += list(predict.router.dependencies) + list(getattr(route, "dependencies", None) or [])
    for included in app_router.routes:
        context = getattr(included, "include_context", None)
        if getattr(included, "original_router", None) is predict.router and context is not None:
            found += list(getattr(context, "dependencies", None) or [])
    return found
