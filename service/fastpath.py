"""The hot request, one raw image POSTed to /predict, answered without FastAPI's routing,
dependency and exception layers.

py-spy put those layers at about a quarter of the event loop's time per request; skipping them
took the event loop's CPU per request from 0.246 to 0.193 ms on the 2-core VM (BENCHMARKS.md,
bench/service_variants.py), CPU that ONNX Runtime's threads share. The answer is made by
the same route function and the same error answers as FastAPI's; the request-metrics middleware
still wraps it. Multipart bodies, other routes and other methods go through FastAPI.
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect, Request
from starlette.routing import Route

from service.api import predict
from service.api.uploads import is_raw_image
from service.errors import Rejected, ServiceError, answer_disconnect, answer_service_error, answer_unexpected

log = logging.getLogger(__name__)

PATH = "/predict"


class RawPredict:
    def __init__(self, on_reject: Rejected) -> None:
        self.on_reject = on_reject
        self.route = next(r for r in predict.router.routes if isinstance(r, Route) and r.path == PATH)

    @staticmethod
    def matches(scope) -> bool:
        if scope["path"] != PATH or scope["method"] != "POST":
            return False
        for key, value in scope["headers"]:
            if key == b"content-type":
                return is_raw_image(value.decode("latin-1"))
        return False

    async def __call__(self, scope, receive, send) -> None:
        scope["route"] = self.route  # the metrics' route label (Starlette has already set scope["app"])
        request = Request(scope, receive)
        try:
            response = await predict.predict(request)
        except ServiceError as exc:
            response = answer_service_error(request, exc, self.on_reject)
        except ClientDisconnect:
            response = answer_disconnect(request, self.on_reject)
        except Exception:
            log.exception("POST %s failed", PATH)
            response = answer_unexpected(request, self.on_reject)
        await response(scope, receive, send)
