"""GET /models and /models/{name}: what the bundles say (labels, input spec, pairing, evaluation)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.http.routes.deps import State, lookup
from service.http.routes.schemas.common import ErrorResponse
from service.http.routes.schemas.operations import ModelInfo, ModelsResponse, OodSummary
from service.core.model import Model
from service.core.shipped import package_version
from service.core.state import ServiceState

router = APIRouter(tags=["models"])


def describe_model(model: Model, state: ServiceState) -> ModelInfo:
    meta = model.meta
    ood = meta.ood
    return ModelInfo(
        name=meta.name,
        version=meta.version,
        architecture=meta.architecture,
        norm=meta.norm,
        primary=meta.name == state.primary,
        baseline=meta.baseline,
        baseline_loaded=model.baseline is not None,
        provider=model.runtime.provider,
        max_batch_size=model.max_batch_size,
        labels=list(meta.labels),
        input=meta.input.model_dump(),
        stats_layers=list(meta.stats_layers),
        ood=None if ood is None else OodSummary(
            kind=ood.kind, method=ood.method, threshold=ood.threshold,
            clean_quantile=ood.clean_quantile, calibration_samples=ood.calibration_samples,
            source=ood.source, heldout_samples=ood.heldout_samples, heldout_fpr=ood.heldout_fpr),
        evaluation=meta.evaluation,
        provenance=None if meta.provenance is None else meta.provenance.model_dump(),
    )


@router.get("/models", response_model=ModelsResponse, summary="Models served")
async def list_models(state: State) -> ModelsResponse:
    return ModelsResponse(
        server_version=package_version(),
        primary=state.primary,
        models=[describe_model(m, state) for _, m in sorted(state.models.items())],
        unavailable=dict(state.errors),
    )


@router.get("/models/{name}", response_model=ModelInfo, responses={404: {"model": ErrorResponse}}, summary="One model")
async def get_model(name: str, request: Request, state: State) -> ModelInfo:
    return describe_model(lookup(request, name), state)
