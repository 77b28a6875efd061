"""Model bundles: the on-disk contract between `rbn/` (writes) and `service/` (reads).

Layout (Triton-compatible, so Triton or KServe can serve the same folder):

    <repository>/<name>/config.pbtxt        Triton model configuration
    <repository>/<name>/<version>/model.onnx
    <repository>/<name>/model.json          what Triton does not know (this module's schema)

Torch-free: the service imports this module to validate bundles at start-up.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

SCHEMA_VERSION = 1
INPUT_NAME = "input"
LOGITS_NAME = "logits"
STATS_NAME = "rbn_stats"
CHANNEL_STATS_NAME = "rbn_channel_stats"
SCORE_NAME = "ood_score"
MODEL_JSON = "model.json"
CONFIG_PBTXT = "config.pbtxt"
ONNX_FILE = "model.onnx"
# How long a batch waits for more requests, by default: rbn-serve's `max_queue_delay_ms` setting and
# Triton's `max_queue_delay_microseconds` in every config.pbtxt, so a bundle batches alike in both.
MAX_QUEUE_DELAY_MS = 2.0


class BundleError(Exception):
    """A bundle is missing, malformed or inconsistent; the message names the bundle and the fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ImageNet's per-channel statistics (RGB, pixels on [0, 1]): what torchvision's and timm's pretrained
# classifiers were trained with. Models trained the TensorFlow way (EfficientNet-Lite) use 0.5 / 0.5 instead.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputSpec(_Strict):
    """What the network takes and how an uploaded image is brought to it.

    Two conventions, one schema: the small default (28×28 grey, ``resize="fit"``, ``invert="auto"``:
    Fashion-MNIST's light objects on black) and the ImageNet one (``InputSpec.imagenet``: RGB,
    shorter side resized to ``resize_size``, centre-cropped to height×width, per-channel mean/std,
    never inverted). rbn.contract.preprocess applies it (training, evaluation and the service alike).
    """

    name: str = Field(INPUT_NAME, description="the graph's input tensor name")
    channels: int = Field(ge=1, le=4, description="1: grey ('L'); 3: RGB; images of any other mode are converted")
    height: int = Field(ge=1, description="the network's input height in pixels (after any crop)")
    width: int = Field(ge=1, description="the network's input width in pixels (after any crop)")
    mean: list[float] = Field(description="per-channel mean subtracted after scaling pixels to [0, 1]")
    std: list[float] = Field(description="per-channel std dividing after the mean")
    resize: Literal["fit", "stretch", "shorter_side_crop"] = Field(
        "fit",
        description=(
            "fit: keep the aspect ratio, scale to fit inside height×width and pad with the border's colour; "
            "stretch: scale to height×width ignoring the aspect ratio; "
            "shorter_side_crop (ImageNet): scale the shorter side to `resize_size` (the longer side to "
            "int(resize_size·long/short), as torchvision's Resize), then take the centre height×width"
        ),
    )
    resize_size: int | None = Field(
        None,
        ge=1,
        description=(
            "shorter_side_crop only (and required there): the shorter side's length before the centre crop, "
            "at least max(height, width); ImageNet models use 256 for a 224 crop (crop ratio 0.875)"
        ),
    )
    interpolation: Literal["lanczos", "bilinear", "bicubic"] = Field(
        "lanczos",
        description=(
            "the resampling filter (Pillow's, antialiased when shrinking); use the one the model was trained "
            "and evaluated with: torchvision's ImageNet weights mostly 'bilinear', timm's often 'bicubic'"
        ),
    )
    invert: Literal["auto", "always", "never"] = Field(
        "auto",
        description=(
            "The training images are light objects on a dark background. 'auto' inverts an image "
            "whose border is brighter than mid-grey (a product photo on a light background). "
            "Photos (ImageNet models) use 'never'."
        ),
    )

    @model_validator(mode="after")
    def _per_channel(self) -> InputSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.resize == "shorter_side_crop":
            if self.resize_size is None:
                raise ValueError("resize 'shorter_side_crop' needs resize_size (the shorter side before the crop)")
            if self.resize_size < max(self.height, self.width):
                raise ValueError(f"resize_size {self.resize_size} is smaller than the {self.height}x{self.width} "
                                 "crop; it must be at least max(height, width)")
        elif self.resize_size is not None:
            raise ValueError(f"resize_size applies only to resize 'shorter_side_crop', not {self.resize!r}")
        return self

    @classmethod
    def imagenet(
        cls,
        size: int = 224,
        resize_size: int | None = None,
        mean: tuple[float, ...] | list[float] = IMAGENET_MEAN,
        std: tuple[float, ...] | list[float] = IMAGENET_STD,
        interpolation: Literal["lanczos", "bilinear", "bicubic"] = "bilinear",
        name: str = INPUT_NAME,
    ) -> InputSpec:
        """The ImageNet convention: RGB, shorter side to ``resize_size`` (default ``round(size / 0.875)``,
        256 for 224), centre crop ``size``×``size``, per-channel ``mean``/``std`` (ImageNet's by
        default; ``(0.5,) * 3`` for models trained on [-1, 1]), never inverted."""
        return cls(
            name=name, channels=3, height=size, width=size, mean=list(mean), std=list(std),
            resize="shorter_side_crop", resize_size=resize_size or round(size / 0.875),
            interpolation=interpolation, invert="never",
        )


class _CalibrationSource(_Strict):
    """What an OOD calibration was fitted on, and how its threshold fared on images it never saw.

    Optional (bundles written before these fields have none): ``rbn`` fills them when it fits the
    score from a data folder (``--calibration-data DIR``). A bundle with no calibration at all has
    ``ood: null`` in model.json: the service then answers the score as uncalibrated, never flagged.
    """

    source: str | None = Field(
        None, description="what the score was fitted on: the data folder's name (an ImageFolder's directory) or data set"
    )
    heldout_samples: int | None = Field(
        None, ge=1, description="clean images of the same source, used for neither fit nor threshold, that heldout_fpr was measured on"
    )
    heldout_fpr: float | None = Field(
        None, ge=0, le=1, description="fraction of the held-out clean images flagged at the threshold (about 1 - clean_quantile when it generalises)"
    )

    @model_validator(mode="after")
    def _heldout_pair(self):
        if (self.heldout_samples is None) != (self.heldout_fpr is None):
            raise ValueError("heldout_samples and heldout_fpr go together")
        return self


class OodCalibration(_CalibrationSource):
    """The first OOD score (bundles made before the graph score): per-layer standardisation of
    `rbn_stats` on clean training data, combined across layers; computed by the service (rbn.contract.ood.rms_score)."""

    kind: Literal["rbn_stats_rms"] = "rbn_stats_rms"
    layer_mean: list[float]
    layer_std: list[float]
    combine: Literal["mean_z", "max_z", "rms_z"] = "rms_z"
    threshold: float = Field(description="score at the clean data's 95th percentile")
    clean_quantile: float = 0.95
    calibration_samples: int = Field(ge=1)

    @property
    def method(self) -> str:
        """The score's name, as GraphOodCalibration.method names its own."""
        return self.combine

    @model_validator(mode="after")
    def _lengths(self) -> OodCalibration:
        if len(self.layer_mean) != len(self.layer_std):
            raise ValueError("layer_mean and layer_std differ in length")
        if any(s <= 0 for s in self.layer_std):
            raise ValueError("layer_std values must be positive")
        if not math.isfinite(self.threshold):
            raise ValueError("threshold must be a finite number")
        return self


OodMethod = Literal["maha", "maha_cc", "energy", "maha+energy", "maha_cc+energy"]  # rbn.contract.ood.METHODS


class GraphOodCalibration(_CalibrationSource):
    """The OOD score computed inside the graph (its `ood_score` output, constants as initialisers),
    so any Open Inference Protocol client or Triton gets the same score; see rbn.contract.ood and rbn.library.ood_graph."""

    kind: Literal["graph"] = "graph"
    method: OodMethod = Field(description="which score the graph computes (rbn.contract.ood)")
    threshold: float = Field(description="score at the held-out clean images' `clean_quantile` quantile")
    clean_quantile: float = Field(0.95, gt=0, lt=1)
    calibration_samples: int = Field(ge=1, description="held-out clean training images that set standardisation and threshold")
    fit_samples: int = Field(ge=1, description="clean training images the per-layer Gaussians were fitted on")

    @model_validator(mode="after")
    def _finite(self) -> GraphOodCalibration:
        if not math.isfinite(self.threshold):
            raise ValueError("threshold must be a finite number")
        return self


def _ood_kind(value: object) -> str:
    """model.json files written before the graph score have no 'kind': they are rbn_stats_rms."""
    if isinstance(value, dict):
        return value.get("kind", "rbn_stats_rms")
    return getattr(value, "kind", "rbn_stats_rms")


class Provenance(_Strict):
    dataset: str
    recipe: dict
    seed: int | None = None
    commit: str | None = None
    created: str | None = None
    checkpoint_sha256: str | None = None


class BundleMeta(_Strict):
    """The schema of `model.json`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    version: int = Field(1, ge=1)
    architecture: str
    norm: Literal["rbn", "bn"]
    baseline: str | None = Field(None, description="for an RBN model: the name of its paired BN bundle")
    labels: list[str] = Field(min_length=2)
    input: InputSpec
    stats_layers: list[str] = Field(description="norm layers in `rbn_stats` column order")
    stats_channels: list[int] | None = Field(
        None, description="channels of each stats layer: how `rbn_channel_stats` splits (absent in older bundles)"
    )
    folded: bool = True
    max_batch_size: int = Field(64, ge=1)
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    ood: Annotated[
        Annotated[GraphOodCalibration, Tag("graph")] | Annotated[OodCalibration, Tag("rbn_stats_rms")],
        Discriminator(_ood_kind),
    ] | None = None
    provenance: Provenance | None = None
    evaluation: dict | None = None

    @model_validator(mode="after")
    def _consistent(self) -> BundleMeta:
        if isinstance(self.ood, OodCalibration) and len(self.ood.layer_mean) != len(self.stats_layers):
            raise ValueError(f"ood calibration has {len(self.ood.layer_mean)} layers, stats_layers has {len(self.stats_layers)}")
        if self.stats_channels is not None and len(self.stats_channels) != len(self.stats_layers):
            raise ValueError(f"stats_channels has {len(self.stats_channels)} entries, stats_layers has {len(self.stats_layers)}")
        if self.stats_channels is not None and any(c < 1 for c in self.stats_channels):
            raise ValueError("stats_channels values must be positive")
        if self.baseline is not None and self.norm != "rbn":
            raise ValueError("only an RBN bundle names a baseline")
        return self


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_path(bundle_dir: Path, version: int) -> Path:
    return bundle_dir / str(version) / ONNX_FILE


def graph_outputs(meta: BundleMeta) -> dict[str, list[int]]:
    """The graph's outputs and their shapes after the batch axis, as the metadata declares them.

    The one definition both `validate_bundle` and the service's runtime check against.
    """
    outputs = {LOGITS_NAME: [len(meta.labels)], STATS_NAME: [len(meta.stats_layers)]}
    if meta.stats_channels is not None:
        outputs[CHANNEL_STATS_NAME] = [sum(meta.stats_channels)]
    if isinstance(meta.ood, GraphOodCalibration):
        outputs[SCORE_NAME] = [1]
    return outputs


class _Enum(str):
    """A protobuf enum value: written without quotes."""


class _OneLine(tuple):
    """A repeated message written on one line (``[ { ... } ]``) instead of one element per line."""


def triton_config(meta: BundleMeta) -> str:
    """config.pbtxt for Triton's onnxruntime backend (batch dimension implicit), as protobuf text.

    The configuration is data (``config``) written by ``_pbtxt``; ``validate_bundle`` compares the
    file with this text, so the layout (which lists are one line) is part of the format and stays as
    the 0.1 bundles have it (tests/rbn/fixtures/bundle-0.1).
    """
    spec = meta.input
    config = {
        "name": meta.name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": meta.max_batch_size,
        "input": [_tensor(spec.name, [spec.channels, spec.height, spec.width])],
        "output": [_tensor(name, dims) for name, dims in graph_outputs(meta).items()],
        "dynamic_batching": {
            "preferred_batch_size": _preferred_sizes(meta.max_batch_size),
            "max_queue_delay_microseconds": round(MAX_QUEUE_DELAY_MS * 1000),
        },
        "instance_group": _OneLine([{"kind": _Enum("KIND_AUTO"), "count": 1}]),
    }
    return _pbtxt(config)


def _tensor(name: str, dims: list[int]) -> dict:
    return {"name": name, "data_type": _Enum("TYPE_FP32"), "dims": dims}


def _pbtxt(message: dict) -> str:
    """Top-level fields one per line; a message field as an indented block; a repeated message one
    element per line (``_OneLine``: all on one line); nested messages and lists inline."""
    lines = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{key} {{", *(f"  {k}: {_value(v)}" for k, v in value.items()), "}"]
        elif isinstance(value, _OneLine):
            lines.append(f"{key} {_value(list(value))}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines += [f"{key} [", ",\n".join(f"  {_value(v)}" for v in value), "]"]
        else:
            lines.append(f"{key}: {_value(value)}")
    return "\n".join(lines) + "\n"


def _value(value: object) -> str:
    """A value written inline: quoted string, bare enum or number, ``[ a, b ]``, ``{ k: v, ... }``."""
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[ " + ", ".join(_value(v) for v in value) + " ]"
    return str(value)


def _preferred_sizes(max_batch_size: int) -> list[int]:
    sizes = [b for b in (8, 16, 32, 64, 128) if b <= max_batch_size]
    return sizes or [max_batch_size]


def write_bundle(repository: Path, meta_fields: dict, onnx_bytes: bytes) -> Path:
    """Write a complete bundle (ONNX, model.json with its sha256, config.pbtxt); returns its folder."""
    bundle_dir = Path(repository) / meta_fields["name"]
    version = meta_fields.get("version", 1)
    target = onnx_path(bundle_dir, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(onnx_bytes)
    meta = BundleMeta(**{**meta_fields, "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest()})
    (bundle_dir / MODEL_JSON).write_text(json.dumps(meta.model_dump(mode="json"), indent=2) + "\n")
    (bundle_dir / CONFIG_PBTXT).write_text(triton_config(meta))
    return bundle_dir


def read_meta(bundle_dir: Path) -> BundleMeta:
    path = Path(bundle_dir) / MODEL_JSON
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir.name}: no {MODEL_JSON}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{bundle_dir.name}: {MODEL_JSON} is not valid JSON ({exc})") from None
    try:
        meta = BundleMeta(**raw) if isinstance(raw, dict) else BundleMeta.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "model.json"
        raise BundleError(f"{bundle_dir.name}: {MODEL_JSON} field {where}: {first['msg']} ({exc.error_count()} error(s))") from None
    if meta.name != Path(bundle_dir).name:
        raise BundleError(f"{bundle_dir.name}: model.json names it {meta.name!r}; the folder name must match")
    return meta


def validate_bundle(bundle_dir: Path, check_graph: bool = True) -> BundleMeta:
    """Check schema, hash, ONNX validity and that the graph's inputs/outputs match the metadata.

    Raises BundleError with one clear message on the first fault; returns the metadata.
    """
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    model_file = onnx_path(bundle_dir, meta.version)
    if not model_file.is_file():
        raise BundleError(f"{meta.name}: missing {model_file.relative_to(bundle_dir)}")
    actual = sha256_file(model_file)
    if actual != meta.onnx_sha256:
        raise BundleError(f"{meta.name}: sha256 of {ONNX_FILE} is {actual[:12]}…, model.json says {meta.onnx_sha256[:12]}…")
    if not (bundle_dir / CONFIG_PBTXT).is_file():
        raise BundleError(f"{meta.name}: missing {CONFIG_PBTXT}")
    if (bundle_dir / CONFIG_PBTXT).read_text() != triton_config(meta):
        raise BundleError(f"{meta.name}: {CONFIG_PBTXT} does not match model.json (rewrite the bundle with `rbn bundle`)")
    if check_graph:
        _check_graph(meta, model_file)
    return meta


def _check_graph(meta: BundleMeta, model_file: Path) -> None:
    import onnx

    try:
        model = onnx.load(str(model_file))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise BundleError(f"{meta.name}: {ONNX_FILE} fails the ONNX checker: {str(exc).splitlines()[0]}") from None

    def dims(value_info) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in model.graph.input}
    outputs = {o.name: dims(o) for o in model.graph.output}
    spec = meta.input
    expected_in = {spec.name: [spec.channels, spec.height, spec.width]}
    expected_out = graph_outputs(meta)
    for kind, actual, expected in (("input", inputs, expected_in), ("output", outputs, expected_out)):
        if set(actual) != set(expected):
            raise BundleError(f"{meta.name}: graph {kind}s are {sorted(actual)}, metadata expects {sorted(expected)}")
        for name, want in expected.items():
            got = actual[name]
            if len(got) != len(want) + 1 or got[1:] != want or isinstance(got[0], int) and got[0] != 0:
                raise BundleError(f"{meta.name}: {kind} {name!r} has shape {got}, expected [batch, {', '.join(map(str, want))}]")


def discover(repository: Path) -> list[Path]:
    """Bundle folders (those holding a model.json) in a repository, sorted by name."""
    return sorted(p for p in Path(repository).iterdir() if p.is_dir() and (p / MODEL_JSON).exists())
