"""POST /predict: classify uploaded image(s) with one model."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.http.routes import params
from service.http.routes.deps import json_response, lookup
from service.http.routes.schemas.common import ERRORS
from service.http.routes.schemas.inference import PredictResponse
from service.http.routes.uploads import IMAGE_BODY, read_uploads

router = APIRouter(tags=["inference"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra={**IMAGE_BODY, "parameters": [params.MODEL.doc, params.TOP_K.doc]},
    summary="Classify image(s)",
)
async def predict(request: Request) -> Response:
    """Send an image as the raw body (`Content-Type: image/*`) or as multipart field(s) `file`.
    Each image gets the top-k labels and an `ood` block (score, flag, per-layer `rbn_stats`).

    ```
    curl -s --data-binary @shoe.png -H 'Content-Type: image/png' 'http://localhost:8000/predict?top_k=3'
    curl -s -F file=@a.png -F file=@b.jpg http://localhost:8000/predict
    ```
    """
    # The hot route: parameters are read by hand (service.http.routes.params), the typed answer is rendered
    # (shape: PredictResponse).
    state, plane = request.app.state.service, request.app.state.plane
    served = lookup(request, params.MODEL.read(request))
    top_k = params.TOP_K.read(request) or state.settings.default_top_k
    uploads = await read_uploads(request, state.settings)
    answer = await plane.predict(served, uploads, top_k)
    return json_response(answer.to_json())
