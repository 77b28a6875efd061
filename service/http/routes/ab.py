"""POST /ab: the same preprocessed image through an RBN model and its BN baseline, compared;
GET /ab/summary: what this process has compared so far."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.http.routes import params
from service.http.routes.deps import json_response, lookup
from service.http.routes.schemas.common import ERRORS, ErrorResponse
from service.http.routes.schemas.inference import AbResponse, AbSummaryResponse
from service.http.routes.uploads import IMAGE_BODY, read_uploads
from service.core.dataplane import CorruptionRequest
from service.core.errors import InvalidArgument

router = APIRouter(tags=["inference"])

DEFAULT_SEVERITY = 3
PARAMS = (params.MODEL, params.CORRUPTION, params.SEVERITY, params.SEED, params.LABEL, params.TOP_K, params.INPUT_PNG)


@router.post(
    "/ab",
    response_model=AbResponse,
    responses={**ERRORS, 409: {"model": ErrorResponse, "description": "The model has no loaded baseline"}},
    openapi_extra={**IMAGE_BODY, "parameters": [p.doc for p in PARAMS]},
    summary="Compare an RBN model with its BN baseline",
)
async def ab(request: Request) -> Response:
    """Both arms see the same preprocessed tensor. With `corruption` (and `severity`, default 3) the
    preprocessed image is corrupted server-side first, deterministically for `seed`. With `label`
    (class index or name) the answer says which arm was right. With `input_png=true` each result
    carries the image both arms saw (preprocessed and corrupted, before normalisation) as a base64 PNG.

    ```
    curl -s --data-binary @shoe.png -H 'Content-Type: image/png' \\
      'http://localhost:8000/ab?corruption=gaussian_noise&severity=4&label=Sneaker'
    ```
    """
    state, plane = request.app.state.service, request.app.state.plane
    model, corruption, severity, seed, label, top_k, input_png = (p.read(request) for p in PARAMS)
    if severity is not None and corruption is None:
        raise InvalidArgument("severity needs a corruption")
    served = lookup(request, model)
    shift = None if corruption is None else CorruptionRequest(corruption, severity or DEFAULT_SEVERITY, seed or 0)
    index = served.label_index(label)
    uploads = await read_uploads(request, state.settings)
    answer = await plane.ab(served, uploads, shift, index, top_k or state.settings.default_top_k, input_png == "true")
    return json_response(answer.to_json())


@router.get("/ab/summary", response_model=AbSummaryResponse, summary="What this process's /ab comparisons found")
async def ab_summary(request: Request) -> Response:
    """Per model pair x corruption x severity: images compared, how often both arms agreed, how many
    came with a label and each arm's accuracy on those, with Wilson 95% intervals. Counted by this
    server process since it started (`since`); with several replicas each has its own table, and
    Prometheus' `rbn_serve_ab_*` series add them up."""
    return json_response(request.app.state.plane.ab_tally.summary())
