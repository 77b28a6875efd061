"""Response and request models for the OpenAPI schema. Hot routes build plain dicts and return them
with orjson; these models document them (and tests validate answers against them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def _examples(*examples: dict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


# --- errors ---------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. too_many_pixels, queue_full")
    message: str


class ErrorResponse(BaseModel):
    model_config = _examples(
        {"error": {"code": "too_many_pixels", "message": "image is 20000x20000 = 400000000 pixels; the limit is 16777216"}}
    )
    error: ErrorDetail


class V2Error(BaseModel):
    model_config = _examples({"error": "unknown model 'nope'"})
    error: str


ERRORS = {
    404: {"model": ErrorResponse, "description": "Unknown model"},
    413: {"model": ErrorResponse, "description": "Body, pixel count or number of files over the limit"},
    415: {"model": ErrorResponse, "description": "Not an image we can read, or an unsupported Content-Type"},
    422: {"model": ErrorResponse, "description": "Empty or corrupt image, bad query value"},
    503: {"model": ErrorResponse, "description": "Queue full (Retry-After set) or shutting down"},
}

# --- predictions ----------------------------------------------------------------------------
class LabelProbability(BaseModel):
    label: str
    index: int
    probability: float


class OodBlock(BaseModel):
    score: float | None = Field(description="OOD score; larger is further from the training data (null: uncalibrated bundle)")
    flag: bool | None = Field(description="score > threshold (the score's 95th percentile on held-out clean training images)")
    threshold: float | None
    stats: dict[str, float] = Field(description="rbn_stats per normalisation layer")


class Prediction(BaseModel):
    label: str
    index: int
    probability: float
    top_k: list[LabelProbability]
    ood: OodBlock
    filename: str | None = Field(None, description="multipart uploads only")


class ModelRef(BaseModel):
    name: str
    version: int


class Timings(BaseModel):
    decode_ms: float
    queue_ms: float
    inference_ms: float
    batch_size: int = Field(description="images in the batch this request ran in")
    total_ms: float


_PREDICTION_EXAMPLE = {
    "label": "Sneaker", "index": 7, "probability": 0.97,
    "top_k": [{"label": "Sneaker", "index": 7, "probability": 0.97}, {"label": "Sandal", "index": 5, "probability": 0.02}],
    "ood": {"score": 0.41, "flag": False, "threshold": 1.63, "stats": {"stem.1": 0.82, "stages.0.0.bn1": 0.67}},
}


class PredictResponse(BaseModel):
    model_config = _examples({
        "model": {"name": "fmnist-resnet20-rbn", "version": 1},
        "predictions": [_PREDICTION_EXAMPLE],
        "timings": {"decode_ms": 0.08, "queue_ms": 0.05, "inference_ms": 0.7, "batch_size": 1, "total_ms": 1.1},
    })
    model: ModelRef
    predictions: list[Prediction]
    timings: Timings


# --- A/B ------------------------------------------------------------------------------------
class ArmAnswer(Prediction):
    model: str
    version: int


class Arms(BaseModel):
    rbn: ArmAnswer
    baseline: ArmAnswer


class AbResult(BaseModel):
    arms: Arms
    agree: bool = Field(description="both arms predict the same class")
    l1_distance: float = Field(description="sum |p_rbn - p_baseline| over classes (0..2)")
    kl_divergence: float = Field(description="KL(p_rbn || p_baseline) in nats")
    correct: dict[str, bool] | None = Field(description="per arm, when a label was given")
    winner: str | None = Field(description="rbn | baseline | both | neither, when a label was given")
    filename: str | None = None


class CorruptionApplied(BaseModel):
    name: str
    severity: int
    seed: int


class LabelGiven(BaseModel):
    index: int
    name: str


class AbTimings(Timings):
    baseline_inference_ms: float


class AbResponse(BaseModel):
    model_config = _examples({
        "corruption": {"name": "gaussian_noise", "severity": 3, "seed": 0},
        "label": {"index": 7, "name": "Sneaker"},
        "results": [{
            "arms": {"rbn": {"model": "fmnist-resnet20-rbn", "version": 1, **_PREDICTION_EXAMPLE},
                     "baseline": {"model": "fmnist-resnet20-bn", "version": 1, **_PREDICTION_EXAMPLE}},
            "agree": True, "l1_distance": 0.04, "kl_divergence": 0.002,
            "correct": {"rbn": True, "baseline": True}, "winner": "both",
        }],
        "timings": {"decode_ms": 0.1, "queue_ms": 0.05, "inference_ms": 0.7, "batch_size": 1, "total_ms": 1.6,
                    "baseline_inference_ms": 0.6},
    })
    corruption: CorruptionApplied | None
    label: LabelGiven | None
    results: list[AbResult]
    timings: AbTimings


# --- models and health ----------------------------------------------------------------------
class OodSummary(BaseModel):
    kind: str = Field(description="'graph': the graph's `ood_score` output; 'rbn_stats_rms': older bundles, from rbn_stats")
    method: str = Field(description="the score: e.g. 'maha+energy' (graph) or 'rms_z' (rbn_stats_rms)")
    threshold: float
    clean_quantile: float
    calibration_samples: int


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
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
    input: dict[str, Any] = Field(description="input spec: channels, height, width, mean, std, resize, invert")
    stats_layers: list[str]
    ood: OodSummary | None
    evaluation: dict[str, Any] | None
    provenance: dict[str, Any] | None


class ModelsResponse(BaseModel):
    server_version: str = Field(description="rbn-serve's version (as in /v2 and rbn_serve_build_info)")
    primary: str | None
    models: list[ModelInfo]
    unavailable: dict[str, str] = Field(description="bundles found but not served, with the reason")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    model_config = _examples({"status": "ready", "models": ["fmnist-resnet20-bn", "fmnist-resnet20-rbn"]})
    status: str = Field(description="ready | loading | draining | failed")
    models: list[str]
    reason: str | None = None


# --- Open Inference Protocol v2 -------------------------------------------------------------
class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    model_config = _examples({
        "name": "fmnist-resnet20-rbn", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "rbn_stats", "datatype": "FP32", "shape": [-1, 21]},
                    {"name": "rbn_channel_stats", "datatype": "FP32", "shape": [-1, 784]},
                    {"name": "ood_score", "datatype": "FP32", "shape": [-1, 1]}],
    })
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferInputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="row-major values, flat or nested; omitted with binary_data_size")


class InferRequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = _examples({
        "id": "42",
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [-0.81] * 784}],
        "outputs": [{"name": "logits"}, {"name": "ood_score"}],
    })
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputTensor]
    outputs: list[InferRequestedOutput] | None = None


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [{
        "model_name": "fmnist-resnet20-rbn", "model_version": "1", "id": "42",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10},
                    {"name": "ood_score", "datatype": "FP32", "shape": [1, 1], "data": [-0.41]}],
    }]})
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]
