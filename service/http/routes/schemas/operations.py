"""/models and health answers."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from service.http.routes.schemas.common import Closed, examples


# --- models and health ----------------------------------------------------------------------
class OodSummary(Closed):
    kind: str = Field(description="'graph': the graph's `ood_score` output; 'rbn_stats_rms': older bundles, from rbn_stats")
    method: str = Field(description="the score: e.g. 'maha+energy' (graph) or 'rms_z' (rbn_stats_rms)")
    threshold: float
    clean_quantile: float
    calibration_samples: int
    source: str | None = Field(None, description="what the calibration was fitted on (a data folder's name); null in older bundles")
    heldout_samples: int | None = Field(None, description="held-out clean images the false-positive rate was measured on")
    heldout_fpr: float | None = Field(None, description="fraction of those held-out clean images the threshold flags")


class ModelInfo(Closed):
    name: str
    version: int
    architecture: str
    norm: str = Field(description="rbn | bn")
    primary: bool
    baseline: str | None = Field(description="paired BN model of an RBN model")
    baseline_loaded: bool
    provider: str = Field(description="cpu | cuda")
    max_batch_size: int = Field(description="largest batch the server forms for this model")
    labels: list[str]
    input: dict[str, Any] = Field(description=(
        "input spec: channels, height, width, mean, std, resize (fit | stretch | shorter_side_crop), resize_size, "
        "interpolation, invert (docs/models.md)"))
    stats_layers: list[str]
    ood: OodSummary | None
    evaluation: dict[str, Any] | None
    provenance: dict[str, Any] | None


class ModelsResponse(Closed):
    server_version: str = Field(description="rbn-serve's version (as in /v2 and rbn_serve_build_info)")
    primary: str | None
    models: list[ModelInfo]
    unavailable: dict[str, str] = Field(description="bundles found but not served, with the reason")


class Health(Closed):
    status: str


class Readiness(Closed):
    model_config = examples({"status": "ready", "models": ["fmnist-resnet20-bn", "fmnist-resnet20-rbn"]})
    status: str = Field(description="ready | loading | draining | failed | unhealthy (inference keeps failing, or a batcher stopped)")
    models: list[str]
    reason: str | None = None
