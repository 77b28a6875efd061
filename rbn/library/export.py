"""Export a classifier to ONNX with three outputs: `logits` (N, classes), `rbn_stats` (N, L) and
`rbn_channel_stats` (N, sum of C) (see rbn.library.stats).

The default graph is folded (rbn.library.fold): each conv -> norm pair becomes one conv plus, for RBN,
one spatial mean and one per-(sample, channel) multiply-add. ``folded=False`` exports the
layer as written, for comparison. Every statistic is computed on the sample's own activations,
so batching never mixes samples.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from rbn.contract.bundle import CHANNEL_STATS_NAME, INPUT_NAME, LOGITS_NAME, STATS_NAME
from rbn.library.fold import fold_model
from rbn.library.stats import record_stats, stats_layer_names

OPSET = 18
OUTPUT_NAMES = (LOGITS_NAME, STATS_NAME, CHANNEL_STATS_NAME)


class WithStats(nn.Module):
    """Wraps a model so that forward returns (logits, rbn_stats, rbn_channel_stats)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with record_stats(self.model) as recorder:
            logits = self.model(x)
        return logits, recorder.stacked(), recorder.channel_stats()


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says why and what to do."""


def _check_exportable(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and not m.track_running_stats:
            raise ExportError(
                f"{name}: a norm layer without running statistics normalises with batch statistics, "
                "so samples in a batch would change each other's outputs; retrain with track_running_stats=True"
            )


def inference_model(model: nn.Module, folded: bool = True, example: torch.Tensor | None = None) -> WithStats:
    """The eval-mode module that export_onnx traces (useful to compare against ONNX Runtime).

    Built on a copy, so the caller's model keeps its mode and weights. ``example`` lets the
    folding confirm each conv -> norm pair in a real forward pass (see rbn.library.fold.fold_model).
    """
    if folded:
        return WithStats(fold_model(model, example)[0]).eval()
    return WithStats(copy.deepcopy(model).eval()).eval()


def _verify_fold(model: nn.Module, folded: WithStats, example: torch.Tensor) -> None:
    """The folded graph must compute what the model computes; refuse to export otherwise."""
    with torch.no_grad():
        expected = inference_model(model, folded=False)(example)
        actual = folded(example)
    for what, want, got in zip(OUTPUT_NAMES, expected, actual, strict=True):
        tolerance = 1e-3 * (1 + want.abs().max().item())
        if (want - got).abs().max().item() > tolerance:
            raise ExportError(
                f"the folded graph's {what} differ from the model's: some conv output probably also "
                "feeds something other than its norm layer; export with folded=False"
            )


def export_onnx(
    model: nn.Module,
    path: str | Path | None = None,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    folded: bool = True,
    opset: int = OPSET,
) -> bytes:
    """Export ``model`` (eval mode) with a dynamic batch axis; returns the ONNX bytes.

    Writes them to ``path`` when given. The same weights always give the same bytes.
    """
    _check_exportable(model)
    device = next(model.parameters()).device
    probe = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    wrapper = inference_model(model, folded, probe)
    if folded:
        _verify_fold(model, wrapper, probe)
    example = torch.zeros(2, *input_shape, device=device)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is the one that emits a lean graph from these plain ops;
        # torch marks it deprecated, which is not news to the caller.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # The per-layer channel counts in rbn.library.stats are constants of the architecture.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The exporter's own notes on graphs it cannot simplify further (EfficientNet's padding Slices:
        # "Constant folding - Only steps=1 can be constant folded"): about its internals, not the model.
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=opset,
            do_constant_folding=True,
        )
    data = _check(buffer.getvalue())
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def _check(data: bytes) -> bytes:
    import onnx

    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    return data


def stats_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """`rbn_stats` column names: the model's norm layers in forward order."""
    device = next(model.parameters()).device
    return stats_layer_names(copy.deepcopy(model).eval(), torch.zeros(1, *input_shape, device=device))


def stats_channels(model: nn.Module, input_shape: tuple[int, int, int]) -> list[int]:
    """Channels of each norm layer in forward order: how `rbn_channel_stats` splits into layers."""
    device = next(model.parameters()).device
    with torch.no_grad():
        wrapper = inference_model(model, folded=False)
        with record_stats(wrapper.model) as recorder:
            wrapper.model(torch.zeros(1, *input_shape, device=device))
    return list(recorder.channels)
