"""Open Inference Protocol v2 REST routes (KServe / Triton): health, metadata, infer.

Errors here use the protocol's form ``{"error": "message"}``; health answers carry no body and
signal true with 200, false with 400, as the protocol says."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.core import oip
from service.http.routes.deps import State, json_response, lookup
from service.http.routes.schemas.oip import InferRequest, InferResponse, ModelMetadata, ServerMetadata, V2Error
from service.core.errors import InvalidTensor
from service.core.model import Model
from service.http.errors import OIP, route_class

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], route_class=route_class(OIP))

V2_ERRORS = {400: {"model": V2Error}, 404: {"model": V2Error}, 503: {"model": V2Error}}
HEALTH = {200: {"description": "true (empty body)"}, 400: {"description": "false (empty body)"}}

# The path parameters, declared once and read by hand (``_model``): no per-request dependency solving.
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "description": "model name"}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}, "description": "model version"}
UNVERSIONED, VERSIONED = {"parameters": [NAME]}, {"parameters": [NAME, VERSION]}


def _model(request: Request) -> Model:
    path = request.path_params
    return lookup(request, path["name"], path.get("version"))


def _truth(value: bool) -> Response:
    return Response(status_code=200 if value else 400)


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> Response:
    return json_response(oip.server_metadata())


@router.get("/health/live", responses=HEALTH, response_class=Response, summary="Server live")
async def live() -> Response:
    return _truth(True)


@router.get("/health/ready", responses=HEALTH, response_class=Response, summary="Server ready")
async def ready(state: State) -> Response:
    return _truth(state.ready)


@router.get("/models/{name}", response_model=ModelMetadata, responses=V2_ERRORS, openapi_extra=UNVERSIONED,
            summary="Model metadata")
@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=V2_ERRORS,
            openapi_extra=VERSIONED, summary="Model metadata (version)")
async def model_metadata(request: Request) -> Response:
    return json_response(oip.model_metadata(_model(request).meta))


@router.get("/models/{name}/ready", responses={**HEALTH, 404: {"model": V2Error}}, response_class=Response,
            openapi_extra=UNVERSIONED, summary="Model ready")
@router.get("/models/{name}/versions/{version}/ready", responses={**HEALTH, 404: {"model": V2Error}},
            response_class=Response, openapi_extra=VERSIONED, summary="Model ready (version)")
async def model_ready(request: Request) -> Response:
    model, state = _model(request), request.app.state.service
    return _truth(model.batcher.started and state.phase in ("ready", "draining"))


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "JSON infer request; or, with the binary tensor data extension, the JSON header followed by raw "
            f"little-endian tensors and the `{oip.HEADER_LENGTH}` header giving the JSON length."
        ),
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{InferRequest.__name__}"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/models/{name}/infer", response_model=InferResponse, responses=V2_ERRORS,
             openapi_extra={**_INFER_BODY, **UNVERSIONED}, summary="Infer on a preprocessed FP32 tensor")
@router.post("/models/{name}/versions/{version}/infer", response_model=InferResponse, responses=V2_ERRORS,
             openapi_extra={**_INFER_BODY, **VERSIONED}, summary="Infer (version)")
async def infer(request: Request) -> Response:
    state, plane = request.app.state.service, request.app.state.plane
    model = _model(request)
    settings = state.settings
    body, headers = await request.body(), request.headers
    encoding, header_length = headers.get("content-encoding"), headers.get(oip.HEADER_LENGTH)
    args = (body, encoding, header_length, model.meta, settings.max_body_bytes, settings.max_queue_size,
            settings.max_input_magnitude, settings.max_response_bytes)
    if len(body) <= settings.inline_body_bytes and encoding in (None, "identity"):
        parsed = oip.read_infer(*args)  # small and plain: cheaper than a thread hop
    else:  # parsing and inflating grow with the body: never on the event loop
        parsed = await state.decoder.pool.run(oip.read_infer, *args)
    queue = state.settings.max_queue_size  # all of a request's batches wait in the queue at once
    if len(parsed.x) > queue:  # could never be queued: 503 + Retry-After would be retried forever
        raise InvalidTensor(f"input {model.meta.input.name!r} has a batch of {len(parsed.x)}; model {model.name} takes "
                            f"at most {queue} images per request (max_queue_size); split the request")
    result = await plane.infer_tensor(model, parsed.x)
    content, headers, media = oip.encode_infer(model.meta, parsed, result.outputs)
    return Response(content, headers=headers, media_type=media)
