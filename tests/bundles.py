"""Random-weight test bundles shaped like the shipped ones (an RBN ResNet-20 and its BN baseline,
the OOD score inside the graph), and bundles in the older format (no `rbn_channel_stats`, the
score computed by the service from `rbn_stats`). Imported as ``tests.bundles``."""

from __future__ import annotations

from pathlib import Path

INPUT = (1, 28, 28)


def _base_meta(model, name: str, norm: str) -> dict:
    from rbn.experiments.data import LABELS, MEAN, STD
    from rbn.library.export import stats_layers

    return {
        "name": name, "architecture": "resnet20", "norm": norm, "labels": list(LABELS),
        "input": {"channels": 1, "height": 28, "width": 28, "mean": [MEAN], "std": [STD]},
        "stats_layers": stats_layers(model, INPUT),
    }  # fmt: skip


def _random_outputs(model, images: int, seed: int):
    import torch

    from rbn.library.export import inference_model

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits, stats, channels = inference_model(model)(torch.randn(images, *INPUT, generator=generator))
    return logits.numpy(), stats.numpy(), channels.numpy()


def graph_scored(model, name: str, norm: str, images: int = 256, method: str = "maha+energy") -> tuple[dict, bytes]:
    """Metadata and ONNX bytes of a bundle whose graph computes `ood_score`, fitted on random inputs
    (half fit the Gaussians, half standardise and set the threshold, as rbn.experiments.evaluate.fit_ood does)."""
    from rbn.contract.bundle import GraphOodCalibration
    from rbn.library.export import export_onnx, stats_channels
    from rbn.contract.ood import threshold
    from rbn.experiments.ood_fit import fit_scorer
    from rbn.library.ood_graph import add_score_output

    channels = stats_channels(model, INPUT)
    logits, _, features = _random_outputs(model, images, seed=1)
    half = images // 2
    scorer = fit_scorer(method, features[:half], logits[:half].argmax(1), channels, logits[half:], features[half:])
    calibration = GraphOodCalibration(method=method, threshold=threshold(scorer.score(logits[half:], features[half:])),
                                      calibration_samples=images - half, fit_samples=half)
    meta = {**_base_meta(model, name, norm), "stats_channels": channels, "ood": calibration.model_dump()}
    return meta, add_score_output(export_onnx(model), scorer)


def legacy(model, name: str, norm: str, images: int = 256) -> tuple[dict, bytes]:
    """A bundle as written before `rbn_channel_stats` existed: two graph outputs, the rbn_stats score."""
    import onnx

    from rbn.library.export import export_onnx
    from rbn.contract.ood import calibrate_rms

    graph = onnx.load_from_string(export_onnx(model))
    kept = [o for o in graph.graph.output if o.name != "rbn_channel_stats"]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    _, stats, _ = _random_outputs(model, images, seed=1)
    calibration = calibrate_rms(stats).model_dump(exclude={"kind"})  # older files have no 'kind'
    return {**_base_meta(model, name, norm), "ood": calibration}, graph.SerializeToString()


def write_test_bundles(out: Path, prefix: str = "test", images: int = 256, old_format: bool = False) -> list[str]:
    """Write ``{prefix}-resnet20-bn`` and ``{prefix}-resnet20-rbn`` (the BN one its baseline) into ``out``,
    random weights; the OOD score fitted on ``images`` random inputs; their names."""
    import torch

    from rbn.contract.bundle import write_bundle
    from rbn.library.resnet import resnet20

    names = []
    for norm in ("bn", "rbn"):
        torch.manual_seed(0)
        model = resnet20(norm).eval()
        name = f"{prefix}-resnet20-{norm}"
        meta, onnx_bytes = (legacy if old_format else graph_scored)(model, name, norm, images)
        meta["baseline"] = f"{prefix}-resnet20-bn" if norm == "rbn" else None
        write_bundle(out, meta, onnx_bytes)
        names.append(name)
    return names
