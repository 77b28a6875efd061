"""The OOD score through the real server: the graph's `ood_score` is what `/predict`, both arms of
`/ab` and `/v2` report; bundles in the older format keep their `rbn_stats` score; a bundle whose
calibration does not fit its graph is refused at load and listed, never served with a wrong score."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from tests.service.svc_support import BN, RBN, encode, start_server

from rbn.contract.bundle import BundleMeta, onnx_path, read_meta, triton_config
from rbn.experiments.data import normalize
from rbn.contract.ood import rms_score
from tests.shipped_bundles import write_test_bundles

IMAGES = np.random.default_rng(7).integers(0, 110, (3, 28, 28), dtype=np.uint8)  # dark border: no auto-invert
IMAGES[0] = 0  # a blank image: far from anything the (random) calibration saw
SCORED_NO_OUTPUT = "test-missing-score"


@pytest.fixture(scope="module")
def ood_server(bundle_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("ood-repo")
    for name in (RBN, BN):
        shutil.copytree(bundle_repo / name, repo / name)
    write_test_bundles(repo, prefix="old", old_format=True)
    # graph-score metadata over a graph without the score output: must be refused, not half-served
    broken = repo / SCORED_NO_OUTPUT
    shutil.copytree(repo / "old-resnet20-bn", broken)
    meta = json.loads((repo / RBN / "model.json").read_text())
    meta.update(name=SCORED_NO_OUTPUT, baseline=None, norm="bn",
                onnx_sha256=json.loads((broken / "model.json").read_text())["onnx_sha256"])
    (broken / "model.json").write_text(json.dumps(meta))
    (broken / "config.pbtxt").write_text(triton_config(BundleMeta(**meta)))  # consistent: only the graph is wrong
    server = start_server(repo, tmp_path_factory.mktemp("ood-log"), max_batch_size=8)
    try:
        yield repo, httpx.Client(base_url=server.url, timeout=60)
    finally:
        server.stop()


def graph_scores(repo, name: str) -> np.ndarray:
    meta = read_meta(repo / name)
    session = ort.InferenceSession(str(onnx_path(repo / name, meta.version)), providers=["CPUExecutionProvider"])
    return session.run(["ood_score"], {"input": normalize(IMAGES)})[0][:, 0]


def predict(client, name: str) -> list[dict]:
    files = [("file", (f"{i}.png", encode(image), "image/png")) for i, image in enumerate(IMAGES)]
    r = client.post("/predict", params={"model": name}, files=files)
    assert r.status_code == 200, r.text
    return [p["ood"] for p in r.json()["predictions"]]


def test_predict_reports_the_graph_score_and_its_flag(ood_server):
    repo, client = ood_server
    expected = graph_scores(repo, RBN)
    threshold = read_meta(repo / RBN).ood.threshold
    blocks = predict(client, RBN)
    assert [b["score"] for b in blocks] == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-5)
    assert [b["flag"] for b in blocks] == [bool(s > threshold) for s in expected]
    assert all(b["threshold"] == threshold for b in blocks)


def test_both_ab_arms_and_v2_carry_the_graph_score(ood_server):
    repo, client = ood_server
    files = [("file", ("0.png", encode(IMAGES[1]), "image/png"))]
    arms = client.post("/ab", params={"model": RBN}, files=files).json()["results"][0]["arms"]
    assert arms["rbn"]["ood"]["score"] == pytest.approx(float(graph_scores(repo, RBN)[1]), rel=1e-5, abs=1e-5)
    assert arms["baseline"]["ood"]["score"] == pytest.approx(float(graph_scores(repo, BN)[1]), rel=1e-5, abs=1e-5)
    body = {"inputs": [{"name": "input", "shape": [3, 1, 28, 28], "datatype": "FP32",
                        "data": normalize(IMAGES).ravel().tolist()}], "outputs": [{"name": "ood_score"}]}
    answer = client.post(f"/v2/models/{RBN}/infer", json=body).json()
    assert [o["name"] for o in answer["outputs"]] == ["ood_score"] and answer["outputs"][0]["shape"] == [3, 1]
    assert answer["outputs"][0]["data"] == pytest.approx(graph_scores(repo, RBN).tolist(), rel=1e-5, abs=1e-5)


def test_old_format_bundle_keeps_its_rbn_stats_score(ood_server):
    repo, client = ood_server
    name = "old-resnet20-rbn"
    meta = read_meta(repo / name)
    assert meta.ood.kind == "rbn_stats_rms" and meta.stats_channels is None
    session = ort.InferenceSession(str(onnx_path(repo / name, 1)), providers=["CPUExecutionProvider"])
    expected = rms_score(session.run(["rbn_stats"], {"input": normalize(IMAGES)})[0], meta.ood)
    assert [b["score"] for b in predict(client, name)] == pytest.approx(expected.tolist(), rel=1e-5)
    info = client.get(f"/models/{name}").json()["ood"]
    assert (info["kind"], info["method"]) == ("rbn_stats_rms", "rms_z")
    assert client.get(f"/models/{RBN}").json()["ood"]["kind"] == "graph"


def test_calibration_that_does_not_fit_the_graph_is_refused(ood_server):
    _, client = ood_server
    answer = client.get("/models").json()
    assert SCORED_NO_OUTPUT not in {m["name"] for m in answer["models"]}
    assert "ood_score" in answer["unavailable"][SCORED_NO_OUTPUT]
    r = client.post("/predict", params={"model": SCORED_NO_OUTPUT}, files=[("file", ("a.png", encode(IMAGES[1]), "image/png"))])
    assert r.status_code == 404
