"""The documented ImageNet demo: `rbn bundle --model efficientnet-lite0 --pair` builds the pretrained BN model
and its exact RBN conversion into a folder; a real server reads it, answers a JPEG photo with torch's
top 5, and /ab shows both arms agreeing. The bundles (~19 MB each) are built into tmp, never committed."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from harness.procs import ROOT, RbnServe, clean_env, http
from rbn.contract.bundle import validate_bundle
from rbn.contract.preprocess import Normalizer, prepare
from rbn.library.intake import build_model

PAIR = ("efficientnet-lite0-bn", "efficientnet-lite0-rbn")


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    repo = tmp_path_factory.mktemp("imagenet-models")
    out = subprocess.run([sys.executable, "-m", "rbn.cli", "bundle", "--model", "efficientnet-lite0", "--pair", "--repository", str(repo)],
                         capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return repo


def chelsea_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skdata.chelsea()).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def torch_logits(jpeg: bytes, meta) -> tuple[np.ndarray, np.ndarray]:
    """(the tensor the service makes of the photo, torch's eval-mode logits on it)."""
    pixels = prepare(Image.open(io.BytesIO(jpeg)), meta.input)
    x = Normalizer(meta.input)(pixels[None])
    with torch.no_grad():
        return x, build_model("efficientnet-lite0").model(torch.from_numpy(x)).numpy()


def test_both_graphs_compute_torchs_logits(repository):
    import onnxruntime as ort

    from rbn.contract.bundle import onnx_path

    meta = validate_bundle(repository / PAIR[0])
    x, want = torch_logits(chelsea_jpeg(), meta)
    for name in PAIR:
        session = ort.InferenceSession(str(onnx_path(repository / name, 1)), providers=["CPUExecutionProvider"])
        assert np.abs(session.run(["logits"], {"input": x})[0] - want).max() <= 1e-4


@pytest.mark.timeout(1200)
def test_the_pair_serves_photos_with_torchs_answers_and_agrees_on_ab(repository, tmp_path):
    bn, rbn = (validate_bundle(repository / name) for name in PAIR)
    assert (bn.norm, rbn.norm, rbn.baseline) == ("bn", "rbn", PAIR[0])
    assert bn.ood is None and rbn.ood is None  # no calibration data given: uncalibrated, said so by the service
    assert rbn.evaluation["conversion_max_abs_logit_difference"] <= 1e-5
    assert bn.input.resize == "shorter_side_crop" and bn.input.channels == 3 and bn.input.invert == "never"
    jpeg = chelsea_jpeg()
    want = np.argsort(-torch_logits(jpeg, bn)[1][0])[:5].tolist()
    assert {bn.labels[i] for i in want[:3]} & {"tabby", "tiger cat", "Egyptian cat"}
    server = RbnServe(tmp_path / "server.log", model_repository=repository, primary_model=PAIR[1])
    try:
        server.wait_ready(timeout=300)
        for name in PAIR:
            status, body = http("POST", f"{server.url}/predict?model={name}&top_k=5", jpeg, {"Content-Type": "image/jpeg"})
            assert status == 200, body[:500]
            answer = json.loads(body)["predictions"][0]
            assert [c["index"] for c in answer["top_k"]] == want
            assert answer["ood"]["flag"] is None and answer["ood"].get("calibrated") is False
        status, body = http("POST", f"{server.url}/ab?model={PAIR[1]}&top_k=5", jpeg, {"Content-Type": "image/jpeg"})
        assert status == 200, body[:500]
        result = json.loads(body)["results"][0]
        assert result["agree"] is True and result["arms"]["baseline"]["model"] == PAIR[0]
        assert result["l1_distance"] <= 1e-4
    finally:
        server.stop()
