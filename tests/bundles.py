"""The paired random-weight test bundles (an RBN ResNet-20 and its BN baseline) that the service,
deployment and benchmark tests serve until trained bundles ship. Imported as ``tests.bundles``."""

from __future__ import annotations

from pathlib import Path


def write_test_bundles(out: Path, prefix: str = "test", images: int = 256) -> list[str]:
    """Write ``{prefix}-resnet20-bn`` and ``{prefix}-resnet20-rbn`` (the BN one its baseline) into ``out``,
    random weights, the OOD score calibrated on ``images`` random inputs; their names."""
    import torch

    from rbn.bundle import write_bundle
    from rbn.data import LABELS, MEAN, STD
    from rbn.export import export_onnx, inference_model, stats_layers
    from rbn.ood import calibrate
    from rbn.resnet import resnet20

    names = []
    for norm in ("bn", "rbn"):
        torch.manual_seed(0)
        model = resnet20(norm).eval()
        with torch.no_grad():
            _, stats = inference_model(model)(torch.randn(images, 1, 28, 28))
        name = f"{prefix}-resnet20-{norm}"
        write_bundle(out, {
            "name": name, "architecture": "resnet20", "norm": norm,
            "baseline": f"{prefix}-resnet20-bn" if norm == "rbn" else None,
            "labels": list(LABELS), "input": {"channels": 1, "height": 28, "width": 28, "mean": [MEAN], "std": [STD]},
            "stats_layers": stats_layers(model, (1, 28, 28)), "ood": calibrate(stats.numpy()).model_dump(),
        }, export_onnx(model))
        names.append(name)
    return names
