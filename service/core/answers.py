"""Typed answers: what the core decides for a request, built once, rendered by each front end.

The core builds these dataclasses (``service.core.predictions.describe``, ``service.core.compare``,
``service.core.dataplane``); metrics and the A/B tally read their fields; a front end renders them with
``to_json`` (the shapes the HTTP schemas in ``service.http.routes.schemas`` document) or its own way.
Nothing downstream reads an answer back by string keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field


UNCALIBRATED_METHOD = "energy"  # what an uncalibrated bundle's score is: -logsumexp(logits), larger = less familiar


def flagged(score: float | None, threshold: float | None) -> bool | None:
    """The OOD flag, defined once: a calibrated score above its threshold; None without a calibration."""
    if score is None or threshold is None:
        return None
    return bool(score > threshold)


def verdict(rbn_right: bool, baseline_right: bool) -> str:
    """Which arm of an A/B comparison was right: rbn, baseline, both or neither."""
    if rbn_right and baseline_right:
        return "both"
    if rbn_right:
        return "rbn"
    return "baseline" if baseline_right else "neither"


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: int

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True, slots=True)
class ClassScore:
    """One class and its probability."""

    label: str
    index: int
    probability: float

    def to_json(self) -> dict:
        return {"label": self.label, "index": self.index, "probability": self.probability}


@dataclass(frozen=True, slots=True)
class OodVerdict:
    """The out-of-distribution part of one image's answer.

    A calibrated bundle's answer is ``{score, flag, threshold, stats}``. An uncalibrated one (model.json
    has no ``ood``) reports the logits' energy as an uncalibrated score, never a flag, and says why:
    ``{score, calibrated: false, method, flag: null, threshold: null, reason, stats}``."""

    score: float | None  # the bundle's calibrated score; None for an uncalibrated bundle
    threshold: float | None  # the score's clean 95th percentile; None for an uncalibrated bundle
    stats: dict[str, float]  # per layer: rbn_stats
    uncalibrated_score: float | None = None  # uncalibrated bundles: the energy, -logsumexp(logits)
    reason: str | None = None  # uncalibrated bundles: why there is no flag

    @property
    def calibrated(self) -> bool:
        return self.threshold is not None

    @property
    def flag(self) -> bool | None:
        return flagged(self.score, self.threshold)

    def to_json(self) -> dict:
        if self.calibrated or self.reason is None:
            return {"score": self.score, "flag": self.flag, "threshold": self.threshold, "stats": self.stats}
        return {"score": self.uncalibrated_score, "calibrated": False, "method": UNCALIBRATED_METHOD,
                "flag": None, "threshold": None, "reason": self.reason, "stats": self.stats}


@dataclass(slots=True)
class Prediction:
    """One image's answer: the predicted class, the top k, the OOD verdict (and the upload's file name)."""

    label: str
    index: int
    probability: float
    top_k: list[ClassScore]
    ood: OodVerdict
    filename: str | None = None

    def to_json(self) -> dict:
        out = {"label": self.label, "index": self.index, "probability": self.probability,
               "top_k": [c.to_json() for c in self.top_k], "ood": self.ood.to_json()}
        if self.filename is not None:
            out["filename"] = self.filename
        return out


@dataclass(slots=True)
class Timings:
    """Where a request's time went, in milliseconds."""

    decode_ms: float
    queue_ms: float
    inference_ms: float
    batch_size: int
    total_ms: float
    baseline_inference_ms: float | None = None  # /ab only

    def to_json(self) -> dict:
        out = {"decode_ms": self.decode_ms, "queue_ms": self.queue_ms, "inference_ms": self.inference_ms,
               "batch_size": self.batch_size, "total_ms": self.total_ms}
        if self.baseline_inference_ms is not None:
            out["baseline_inference_ms"] = self.baseline_inference_ms
        return out


@dataclass(slots=True)
class PredictAnswer:
    model: ModelRef
    predictions: list[Prediction]
    timings: Timings

    def to_json(self) -> dict:
        return {"model": self.model.to_json(), "predictions": [p.to_json() for p in self.predictions],
                "timings": self.timings.to_json()}


@dataclass(frozen=True, slots=True)
class ArmsCorrect:
    """Per arm: was its answer the label?"""

    rbn: bool
    baseline: bool

    def to_json(self) -> dict:
        return {"rbn": self.rbn, "baseline": self.baseline}


@dataclass(slots=True)
class AbResult:
    """Both arms on one image, compared."""

    rbn_model: ModelRef
    rbn: Prediction
    baseline_model: ModelRef
    baseline: Prediction
    l1_distance: float
    kl_divergence: float
    correct: ArmsCorrect | None = None  # None without a label
    filename: str | None = None
    input_png: str | None = None  # base64 PNG of the tensor both arms saw, when asked for

    @property
    def agree(self) -> bool:
        return self.rbn.index == self.baseline.index

    @property
    def winner(self) -> str | None:
        """Which arm was right (``verdict``); None without a label."""
        return None if self.correct is None else verdict(self.correct.rbn, self.correct.baseline)

    def to_json(self) -> dict:
        def arm(ref: ModelRef, p: Prediction) -> dict:
            out = p.to_json()
            out.pop("filename", None)  # the file name belongs to the result, not to an arm
            return {"model": ref.name, "version": ref.version, **out}

        out = {
            "arms": {"rbn": arm(self.rbn_model, self.rbn), "baseline": arm(self.baseline_model, self.baseline)},
            "agree": self.agree,
            "l1_distance": self.l1_distance,
            "kl_divergence": self.kl_divergence,
            "correct": None if self.correct is None else self.correct.to_json(),
            "winner": self.winner,
        }
        if self.filename is not None:
            out["filename"] = self.filename
        if self.input_png is not None:
            out["input_png"] = self.input_png
        return out


@dataclass(frozen=True, slots=True)
class CorruptionRequest:
    """The server-side corruption an /ab request asks for."""

    name: str
    severity: int
    seed: int = 0

    def to_json(self) -> dict:
        return {"name": self.name, "severity": self.severity, "seed": self.seed}


@dataclass(frozen=True, slots=True)
class LabelRef:
    """A label a request gave: its index and name in the model's labels."""

    index: int
    name: str

    def to_json(self) -> dict:
        return {"index": self.index, "name": self.name}


@dataclass(slots=True)
class AbAnswer:
    corruption: CorruptionRequest | None
    label: LabelRef | None
    results: list[AbResult] = field(default_factory=list)
    timings: Timings | None = None

    def to_json(self) -> dict:
        return {
            "corruption": None if self.corruption is None else self.corruption.to_json(),
            "label": None if self.label is None else self.label.to_json(),
            "results": [r.to_json() for r in self.results],
            "timings": None if self.timings is None else self.timings.to_json(),
        }
