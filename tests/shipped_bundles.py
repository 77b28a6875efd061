"""Test bundles without torch: the shipped bundles (models/) written under test names, and the same
graphs in the older bundle format (no `rbn_channel_stats`, the OOD score computed by the service from
`rbn_stats`). The service tests use these, so they never import torch. Imported as ``tests.shipped_bundles``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MODELS = Path(__file__).resolve().parents[1] / "models"
SOURCES = {"bn": "fmnist-resnet20-bn", "rbn": "fmnist-resnet20-rbn"}  # the shipped pair


def write_test_bundles(out: Path, prefix: str = "test", old_format: bool = False) -> list[str]:
    """Write ``{prefix}-resnet20-bn`` and ``{prefix}-resnet20-rbn`` (the BN one its baseline) into ``out``:
    the shipped pair's graphs and metadata under these names (``old_format``: as bundles were written
    before the graph score, calibrated on 256 random inputs); their names."""
    from rbn.contract.bundle import onnx_path, read_meta, write_bundle

    names = []
    for norm, source in SOURCES.items():
        meta = read_meta(MODELS / source)
        onnx_bytes = onnx_path(MODELS / source, meta.version).read_bytes()
        fields = {**json.loads((MODELS / source / "model.json").read_text()), "name": f"{prefix}-resnet20-{norm}",
                  "baseline": f"{prefix}-resnet20-bn" if norm == "rbn" else None}
        if old_format:
            fields, onnx_bytes = _legacy(fields, onnx_bytes)
        write_bundle(out, fields, onnx_bytes)
        names.append(fields["name"])
    return names


def _legacy(fields: dict, onnx_bytes: bytes) -> tuple[dict, bytes]:
    """The graph cut to its first two outputs (logits, rbn_stats) and the rbn_stats score calibrated
    on random inputs, as a bundle written before `rbn_channel_stats` existed."""
    import onnx
    import onnxruntime as ort
    from onnx.utils import Extractor

    from rbn.contract.bundle import INPUT_NAME, LOGITS_NAME, STATS_NAME
    from rbn.contract.ood import calibrate_rms

    graph = Extractor(onnx.load_from_string(onnx_bytes)).extract_model([INPUT_NAME], [LOGITS_NAME, STATS_NAME])
    cut = graph.SerializeToString()
    session = ort.InferenceSession(cut, providers=["CPUExecutionProvider"])
    spec = fields["input"]
    x = np.random.default_rng(1).standard_normal((256, spec["channels"], spec["height"], spec["width"])).astype(np.float32)
    stats = session.run([STATS_NAME], {INPUT_NAME: x})[0]
    calibration = calibrate_rms(stats).model_dump(exclude={"kind"})  # older files have no 'kind'
    legacy = {k: v for k, v in fields.items() if k not in ("stats_channels", "onnx_sha256")}
    return {**legacy, "ood": calibration}, cut
