"""Fixtures for the benchmark-harness tests: a model repository with the paired random-weight test bundles."""

from __future__ import annotations

from pathlib import Path

import pytest

BN = "test-resnet20-bn"


def write_test_bundles(out: Path) -> None:
    """An RBN ResNet-20 bundle and its BN baseline, random weights (as tests/service writes them)."""
    import torch

    from rbn.bundle import write_bundle
    from rbn.data import LABELS, MEAN, STD
    from rbn.export import export_onnx, inference_model, stats_layers
    from rbn.ood import calibrate
    from rbn.resnet import resnet20

    for norm in ("bn", "rbn"):
        torch.manual_seed(0)
        model = resnet20(norm).eval()
        with torch.no_grad():
            _, stats = inference_model(model)(torch.randn(64, 1, 28, 28))
        write_bundle(out, dict(
            name=f"test-resnet20-{norm}", architecture="resnet20", norm=norm, baseline=BN if norm == "rbn" else None,
            labels=list(LABELS), input=dict(channels=1, height=28, width=28, mean=[MEAN], std=[STD]),
            stats_layers=stats_layers(model, (1, 28, 28)), ood=calibrate(stats.numpy()).model_dump(),
        ), export_onnx(model))


@pytest.fixture(scope="session")
def bench_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("bench-models")
    write_test_bundles(repo)
    return repo
