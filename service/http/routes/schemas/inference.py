"""/predict and /ab answers (built as plain dicts by ``service.core.dataplane``; these declare and check them)."""

from __future__ import annotations

from pydantic import Field, model_serializer

from service.http.routes.schemas.common import Closed, examples


# --- predictions ----------------------------------------------------------------------------
class LabelProbability(Closed):
    label: str
    index: int
    probability: float


class OodBlock(Closed):
    score: float | None = Field(description=(
        "OOD score; larger is further from the training data. For a bundle without an OOD calibration: "
        "the logits' energy, uncalibrated (`calibrated` is false)"))
    calibrated: bool | None = Field(None, description="present, and false, only when the bundle has no OOD calibration")
    method: str | None = Field(None, description="uncalibrated bundles: what the score is ('energy': -logsumexp of the logits)")
    flag: bool | None = Field(description=(
        "score > threshold (the score's 95th percentile on held-out clean training images); null when uncalibrated"))
    threshold: float | None
    reason: str | None = Field(None, description="uncalibrated bundles: why there is no flag, and how to calibrate")
    stats: dict[str, float] = Field(description="rbn_stats per normalisation layer")

    @model_serializer(mode="wrap")
    def _only_when_uncalibrated(self, handler):
        """A calibrated bundle's block keeps its four keys: the uncalibrated ones are left out when absent."""
        out = handler(self)
        for key in _UNCALIBRATED_KEYS:
            if out.get(key) is None:
                out.pop(key, None)
        return out


_UNCALIBRATED_KEYS = ("calibrated", "method", "reason")


class Prediction(Closed):
    label: str
    index: int
    probability: float
    top_k: list[LabelProbability]
    ood: OodBlock
    filename: str | None = Field(None, description="multipart uploads only")


class ModelRef(Closed):
    name: str
    version: int


class Timings(Closed):
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


class PredictResponse(Closed):
    model_config = examples({
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


class Arms(Closed):
    rbn: ArmAnswer
    baseline: ArmAnswer


class AbResult(Closed):
    arms: Arms
    agree: bool = Field(description="both arms predict the same class")
    l1_distance: float = Field(description="sum |p_rbn - p_baseline| over classes (0..2)")
    kl_divergence: float = Field(description="KL(p_rbn || p_baseline) in nats")
    correct: dict[str, bool] | None = Field(description="per arm, when a label was given")
    winner: str | None = Field(description="rbn | baseline | both | neither, when a label was given")
    filename: str | None = None
    input_png: str | None = Field(None, description="with input_png=true: the image both arms saw (after "
                                  "preprocessing and corruption, before normalisation) as a base64 PNG")


class CorruptionApplied(Closed):
    name: str
    severity: int
    seed: int


class LabelGiven(Closed):
    index: int
    name: str


class AbTimings(Timings):
    baseline_inference_ms: float


class AbResponse(Closed):
    model_config = examples({
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


# --- A/B summary ----------------------------------------------------------------------------
class Rate(Closed):
    successes: int
    total: int
    value: float | None = Field(description="successes / total (null when total is 0)")
    low: float = Field(description="Wilson 95% interval, lower end")
    high: float = Field(description="Wilson 95% interval, upper end")


class ArmAccuracy(Closed):
    rbn: Rate
    baseline: Rate


class AbSummaryRow(Closed):
    model: str
    baseline: str
    corruption: str = Field(description="corruption name, or 'none'")
    severity: int = Field(description="1..5, or 0 without a corruption")
    comparisons: int = Field(description="images compared")
    agreement: Rate = Field(description="images on which both arms predicted the same class")
    labelled: int = Field(description="images that came with a label")
    accuracy: ArmAccuracy | None = Field(description="each arm's accuracy on the labelled images (null: none labelled)")


class AbSummaryResponse(Closed):
    model_config = examples({
        "scope": "process", "since": "2026-11-29T13:20:00Z", "comparisons": 40, "dropped": 0,
        "rows": [{
            "model": "fmnist-resnet20-rbn", "baseline": "fmnist-resnet20-bn", "corruption": "gaussian_noise",
            "severity": 3, "comparisons": 40, "agreement": {"successes": 36, "total": 40, "value": 0.9, "low": 0.769,
                                                             "high": 0.96},
            "labelled": 40,
            "accuracy": {"rbn": {"successes": 34, "total": 40, "value": 0.85, "low": 0.709, "high": 0.929},
                         "baseline": {"successes": 31, "total": 40, "value": 0.775, "low": 0.625, "high": 0.877}},
        }],
    })
    scope: str = Field(description="'process': counted by this server process since it started "
                                   "(Prometheus' rbn_serve_ab_* series add up every replica)")
    since: str = Field(description="when this process started counting (UTC, ISO 8601)")
    comparisons: int = Field(description="images compared, all rows")
    dropped: int = Field(description="images not counted because the table reached its size bound")
    rows: list[AbSummaryRow]
