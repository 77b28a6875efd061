"""The prediction counters read back from /metrics: ``rbn_serve_ood_flagged_total`` counts exactly the answers
whose own ``ood.flag`` is true (and the OIP path, which has no described answer, flags by the same rule), the
score histogram counts every scored image, the class counter every top-1 label. The flag rule itself at its
boundary: a score equal to the threshold is not flagged. The real app in process, its own /metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest
from asgi_app import RBN_MODEL, SAMPLE, app, metric
from PIL import Image

from service.core.answers import flagged

PNG = {"Content-Type": "image/png"}


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


NOISE = png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))  # far from Fashion-MNIST: flagged
CHECKER = png((np.indices((28, 28)).sum(axis=0) % 2 * 255).astype(np.uint8))


@pytest.mark.parametrize(("score", "threshold", "flag"), [
    (2.0, 2.0, False),            # equal: not above
    (2.0000001, 2.0, True),
    (1.9999999, 2.0, False),
    (-1.0, -0.5, False),
    (0.0, -0.5, True),
    (None, 2.0, None),            # no score (uncalibrated): no flag
    (3.0, None, None),
])
def test_the_flag_is_a_score_strictly_above_its_threshold(score, threshold, flag):
    assert flagged(score, threshold) is flag


@pytest.fixture(scope="module")
def served():
    with app() as a:
        yield a


def counters(served) -> dict[str, float]:
    text = served.client.get("/metrics").text
    return {"flagged": metric(text, "rbn_serve_ood_flagged_total", model=RBN_MODEL),
            "scored": metric(text, "rbn_serve_ood_score_count", model=RBN_MODEL),
            "ankle": metric(text, "rbn_serve_predictions_total", model=RBN_MODEL, label="Ankle boot")}


def test_flagged_total_counts_the_answers_own_flags(served):
    before = counters(served)
    r = served.client.post("/predict", files=[("file", ("a.png", SAMPLE, "image/png")),
                                              ("file", ("b.png", NOISE, "image/png")),
                                              ("file", ("c.png", CHECKER, "image/png")),
                                              ("file", ("d.png", SAMPLE, "image/png"))])
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    flags = [p["ood"]["flag"] for p in answers]
    assert flags == [False, True, True, False]  # two flagged, two not: a flipped rule or a constant fails
    for p in answers:
        assert p["ood"]["flag"] is (p["ood"]["score"] > p["ood"]["threshold"])
    after = counters(served)
    assert after["flagged"] - before["flagged"] == 2
    assert after["scored"] - before["scored"] == 4
    assert after["ankle"] - before["ankle"] == sum(p["label"] == "Ankle boot" for p in answers)


def test_an_unflagged_request_leaves_the_flag_counter_alone(served):
    before = counters(served)
    r = served.client.post("/predict", content=SAMPLE, headers=PNG)
    assert r.json()["predictions"][0]["ood"]["flag"] is False
    after = counters(served)
    assert after["flagged"] == before["flagged"] and after["scored"] == before["scored"] + 1


def test_the_oip_path_counts_flags_by_the_same_rule(served):
    model = served.state.models[RBN_MODEL]
    threshold = model.scorer.threshold
    inputs = []
    for data in (SAMPLE, NOISE, CHECKER):
        pixels = np.asarray(Image.open(io.BytesIO(data)), np.uint8)[None, None]
        inputs.append(model.normalize(pixels))
    x = np.concatenate(inputs)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": "ood_score"}]}
    before = counters(served)
    r = served.client.post(f"/v2/models/{RBN_MODEL}/infer", json=body)
    assert r.status_code == 200, r.text
    scores = r.json()["outputs"][0]["data"]
    expected = sum(s > threshold for s in scores)
    assert expected == 2 and len(scores) == 3
    after = counters(served)
    assert after["flagged"] - before["flagged"] == expected
    assert after["scored"] - before["scored"] == 3
