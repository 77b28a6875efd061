"""``rbn-serve validate``: check bundles as the server would load them, one line each."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from rbn.contract.bundle import BundleError, validate_bundle
from service.core.repository import Bundle
from service.core.runtime import ModelRuntime


def check(folder: Path) -> str:
    """Schema, hash, Triton config, the ONNX checker when ``onnx`` is installed, the session's
    inputs/outputs against model.json, and one inference of batch 2. Returns a summary; raises BundleError."""
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a directory")
    full = importlib.util.find_spec("onnx") is not None  # a training-side dependency: its checker runs when present
    meta = validate_bundle(folder, check_graph=full)
    runtime = ModelRuntime(meta, Bundle(meta, folder).onnx_file, providers="cpu", intra_op_threads=1)
    spec = meta.input
    try:
        outputs = runtime.run(np.zeros((2, spec.channels, spec.height, spec.width), np.float32))
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        first = str(exc).partition("\n")[0]
        raise BundleError(f"{meta.name}: inference of a batch of 2 failed: {first}") from None
    if not all(np.isfinite(o).all() for o in outputs):
        raise BundleError(f"{meta.name}: the graph gives non-finite outputs on a zero input")
    pairing = f", baseline {meta.baseline}" if meta.baseline else ""
    ood = f"OOD score {meta.ood.method} ({'in the graph' if meta.ood.kind == 'graph' else 'from rbn_stats'})" if meta.ood else "no OOD calibration"
    return (f"{meta.name} v{meta.version}: {meta.norm}{pairing}, {len(meta.labels)} labels, "
            f"input {spec.channels}x{spec.height}x{spec.width}, {len(meta.stats_layers)} stats layers, {ood}")


def validate_dirs(folders: list[Path]) -> int:
    bad = 0
    for folder in folders:
        try:
            print(f"OK    {check(folder)}")
        except BundleError as exc:
            bad += 1
            print(f"FAIL  {folder}: {exc}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(validate_dirs([Path(p) for p in sys.argv[1:]]))
