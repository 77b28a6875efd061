"""``inference.GRPCInferenceService`` on the core: each RPC fills the request context (id, deadline,
client-gone, protocol), checks the API key, calls the data plane, and renders core errors through the one
function in ``service.grpc.errors``. Every call is counted in the same metric series as HTTP requests, with
the gRPC method's full name (``/inference.GRPCInferenceService/ModelInfer``) as the route label.

Probes (ServerLive, ServerReady and the grpc.health.v1 service) need no key, as HTTP's /v2/health/* do;
every other RPC needs ``authorization: Bearer <key>`` metadata when keys are configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from service.core import context as request_context
from service.core.config import Settings
from service.core.dataplane import DataPlane
from service.core.errors import InvalidTensor, ModelNotFound, ServiceError
from service.core.model import Model
from service.core.state import ServiceState
from service.grpc import codec
from service.grpc import grpc_service_pb2 as pb
from service.grpc import grpc_service_pb2_grpc as pb_grpc
from service.grpc.errors import render
from service.core.keys import Keys

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
PROTOCOL = "grpc"


class Unauthenticated(ServiceError):
    status, code = 401, "unauthorized"


def route(method: str) -> str:
    """The metrics' route label of an RPC: its full gRPC method name."""
    return f"/{SERVICE}/{method}"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, settings: Settings, state: ServiceState, plane: DataPlane, access: Keys) -> None:
        self.settings = settings
        self.state = state
        self.plane = plane
        self.access = access

    # --- the one wrapper every unary RPC goes through --------------------------------------------
    async def _call(self, method: str, context: grpc.aio.ServicerContext, work: Callable[[dict], Awaitable],
                    open_: bool = False):
        metadata = dict(context.invocation_metadata() or ())
        request_id = request_context.accept_id(_ascii(metadata.get("x-request-id")))
        remaining = context.time_remaining()
        ctx = request_context.RequestContext(
            request_id, client_gone=context.cancelled,
            deadline=None if remaining is None else time.monotonic() + remaining, protocol=PROTOCOL)
        token = request_context.enter(ctx)
        start = time.perf_counter()
        status, labels = 200, {"model": ""}
        self.state.in_flight += 1
        try:
            if not open_:
                self._check_key(metadata)
            answer = await work(labels)
            context.set_trailing_metadata((("x-request-id", request_id),))
            return answer
        except BaseException as exc:
            if not isinstance(exc, (ServiceError, asyncio.CancelledError)):
                log.exception("%s failed", route(method))
            status, code, grpc_code, message, trailing = render(exc, request_id)
            self.state.metrics.rejected.labels(route(method), code).inc()
            if isinstance(exc, asyncio.CancelledError):
                raise
            context.set_trailing_metadata(trailing)
            await context.abort(grpc_code, message)
        finally:
            self.state.in_flight -= 1
            request_context.leave(token)
            self.state.metrics.observe_request(route(method), labels["model"], status, time.perf_counter() - start)

    def _check_key(self, metadata: dict) -> None:
        access = self.access
        if not access.required:
            return
        given = metadata.get("authorization")
        if not access.allows(_ascii(given)):
            message = "this call needs an API key: send the metadata authorization: Bearer <key>"
            if given is not None:
                message = "the API key is not accepted: send authorization: Bearer <key> with a current key"
            raise Unauthenticated(message)

    def _model(self, name: str, version: str, labels: dict) -> Model:
        model = self.state.model(name or None)
        if version and version != str(model.meta.version):
            raise ModelNotFound(f"model {name!r} has no version {version!r}; served: {model.meta.version}")
        labels["model"] = model.name
        return model

    # --- health and metadata ---------------------------------------------------------------------
    async def ServerLive(self, request, context):
        async def work(labels):
            return pb.ServerLiveResponse(live=True)
        return await self._call("ServerLive", context, work, open_=True)

    async def ServerReady(self, request, context):
        async def work(labels):
            return pb.ServerReadyResponse(ready=self.state.ready)
        return await self._call("ServerReady", context, work, open_=True)

    async def ModelReady(self, request, context):
        async def work(labels):
            model = self._model(request.name, request.version, labels)
            return pb.ModelReadyResponse(ready=model.batcher.started and self.state.phase in ("ready", "draining"))
        return await self._call("ModelReady", context, work)

    async def ServerMetadata(self, request, context):
        async def work(labels):
            return codec.server_metadata()
        return await self._call("ServerMetadata", context, work)

    async def ModelMetadata(self, request, context):
        async def work(labels):
            return codec.model_metadata(self._model(request.name, request.version, labels).meta)
        return await self._call("ModelMetadata", context, work)

    async def ModelConfig(self, request, context):
        async def work(labels):
            model = self._model(request.name, request.version, labels)
            return codec.model_config(model.meta, model.max_batch_size)
        return await self._call("ModelConfig", context, work)

    # --- inference -------------------------------------------------------------------------------
    async def ModelInfer(self, request, context):
        async def work(labels):
            return await self._infer(request, labels)
        return await self._call("ModelInfer", context, work)

    async def _infer(self, request: pb.ModelInferRequest, labels: dict) -> pb.ModelInferResponse:
        model = self._model(request.model_name, request.model_version, labels)
        settings = self.settings
        args = (request, model.meta, settings.max_input_magnitude, settings.max_response_bytes)
        if codec.input_bytes(request) <= settings.inline_body_bytes:
            parsed = codec.parse_infer(*args)  # small: cheaper than a thread hop
        else:  # the copy and the checks grow with the tensor: never on the event loop
            parsed = await self.state.decoder.pool.run(codec.parse_infer, *args)
        queue = settings.max_queue_size  # all of a request's batches wait in the queue at once
        if len(parsed.x) > queue:
            raise InvalidTensor(f"input {model.meta.input.name!r} has a batch of {len(parsed.x)}; model {model.name} "
                                f"takes at most {queue} images per request (max_queue_size); split the request")
        result = await self.plane.infer_tensor(model, parsed.x)
        return codec.encode_infer(model.meta, parsed, result.outputs)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest], context
                               ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's streaming extension: one answer per request, in order; a request that fails gets its
        message in ``error_message`` and the stream goes on (the key is checked once, for the stream)."""
        metadata = dict(context.invocation_metadata() or ())
        stream_id = request_context.accept_id(_ascii(metadata.get("x-request-id")))
        try:
            self._check_key(metadata)
        except Unauthenticated as exc:
            _, code, grpc_code, message, trailing = render(exc, stream_id)
            self.state.metrics.rejected.labels(route("ModelStreamInfer"), code).inc()
            context.set_trailing_metadata(trailing)
            await context.abort(grpc_code, message)
        method = route("ModelStreamInfer")
        async for request in request_iterator:
            ctx = request_context.RequestContext(request_context.new_id(), client_gone=context.cancelled,
                                                 protocol=PROTOCOL)
            token = request_context.enter(ctx)
            start = time.perf_counter()
            status, labels = 200, {"model": ""}
            self.state.in_flight += 1
            try:
                answer = pb.ModelStreamInferResponse(infer_response=await self._infer(request, labels))
            except BaseException as exc:  # CancelledError too: the client left mid-stream (counted, then re-raised)
                if not isinstance(exc, (ServiceError, asyncio.CancelledError)):
                    log.exception("%s failed", method)
                status, code, _, message, _ = render(exc, ctx.request_id)
                self.state.metrics.rejected.labels(method, code).inc()
                if not isinstance(exc, Exception):
                    raise
                answer = pb.ModelStreamInferResponse(error_message=message)
            finally:
                self.state.in_flight -= 1
                request_context.leave(token)
                self.state.metrics.observe_request(method, labels["model"], status, time.perf_counter() - start)
            yield answer
        context.set_trailing_metadata((("x-request-id", stream_id),))


def _ascii(value: str | bytes | None) -> bytes | None:
    """Metadata values arrive as str (bytes only for -bin keys): as the HTTP side's bytes."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        return b""
