"""The prediction counters read back from /metrics: ``rbn_serve_ood_flagged_total`` counts exactly the answers
whose own ``ood.flag`` is true (and the OIP path, which has no described answer, flags by the same rule), the
score histogram counts every scored image, the class counter every top-1 label. The flag rule itself at its
boundary: a score equal to the threshold is not flagged. The real app in process, its own /metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest
from tests.service.asgi_app import RBN_MODEL, SAMPLE, app, metric
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


# --- the metric contract (names, types, labels, buckets: what dashboards and alerts read) -------------------
from service.core.metrics import Metrics, status_class  # noqa: E402

LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTRACT = {  # attribute: (exposed name, type, label names, bucket upper bounds)
    "requests": ("rbn_serve_requests", "counter", ("route", "model", "status"), None),
    "request_seconds": ("rbn_serve_request_duration_seconds", "histogram", ("route", "model"), LATENCY),
    "rejected": ("rbn_serve_rejected_requests", "counter", ("route", "reason"), None),
    "queue_wait": ("rbn_serve_queue_wait_seconds", "histogram", ("model",), LATENCY),
    "inference_seconds": ("rbn_serve_inference_duration_seconds", "histogram", ("model",), LATENCY),
    "batch_size": ("rbn_serve_batch_size", "histogram", ("model",), (1, 2, 4, 8, 16, 32, 64, 128, 256)),
    "predictions": ("rbn_serve_predictions", "counter", ("model", "label"), None),
    "ood_score": ("rbn_serve_ood_score", "histogram", ("model",),
                  (-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 25.0)),
    "ood_flagged": ("rbn_serve_ood_flagged", "counter", ("model",), None),
    "ab": ("rbn_serve_ab_comparisons", "counter", ("model", "baseline", "corruption", "severity", "agree"), None),
    "ab_labelled": ("rbn_serve_ab_labelled", "counter", ("model", "corruption", "severity"), None),
    "ab_correct": ("rbn_serve_ab_correct", "counter", ("model", "arm", "corruption", "severity"), None),
    "shadow": ("rbn_serve_shadow_comparisons", "counter", ("model", "baseline", "agree"), None),
    "shadow_dropped": ("rbn_serve_shadow_dropped", "counter", ("model", "reason"), None),
    "model_info": ("rbn_serve_model_info", "gauge", ("model", "version", "norm", "provider", "baseline"), None),
    "bundle_errors": ("rbn_serve_bundle_errors", "gauge", (), None),
    "build_info": ("rbn_serve_build_info", "gauge", ("version", "python", "onnxruntime"), None),
}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def value(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("attribute", sorted(CONTRACT))
def test_each_metric_keeps_its_name_type_labels_and_buckets(metrics, attribute):
    name, kind, labels, buckets = CONTRACT[attribute]
    metric = getattr(metrics, attribute)
    family = next(iter(metric.collect()))
    assert (family.name, family.type) == (name, kind)
    assert tuple(metric._labelnames) == labels
    assert family.documentation  # every metric says what it counts
    if buckets is not None:
        assert tuple(metric._upper_bounds[:-1]) == buckets and metric._upper_bounds[-1] == float("inf")


def test_status_classes():
    assert [status_class(s) for s in (200, 299, 301, 404, 499, 500, 503)] == ["2xx", "2xx", "3xx", "4xx", "4xx", "5xx", "5xx"]


def test_observe_request_by_hand(metrics):
    metrics.observe_request("/predict", "m", 404, 0.003)
    metrics.observe_request("/predict", "m", 404, 0.003)
    metrics.observe_request("/predict", "m", 200, 0.0004)
    assert value(metrics, "rbn_serve_requests_total", route="/predict", model="m", status="4xx") == 2
    assert value(metrics, "rbn_serve_requests_total", route="/predict", model="m", status="2xx") == 1
    seconds = {"route": "/predict", "model": "m"}
    assert value(metrics, "rbn_serve_request_duration_seconds_bucket", le="0.0005", **seconds) == 1
    assert value(metrics, "rbn_serve_request_duration_seconds_bucket", le="0.002", **seconds) == 1
    assert value(metrics, "rbn_serve_request_duration_seconds_bucket", le="0.005", **seconds) == 3
    assert value(metrics, "rbn_serve_request_duration_seconds_sum", **seconds) == pytest.approx(0.0064)


def test_observe_ab_by_hand(metrics):
    from types import SimpleNamespace as Ns  # AbResult's two fields observe_ab reads

    results = [Ns(agree=True, correct=Ns(rbn=True, baseline=False)),
               Ns(agree=False, correct=None),
               Ns(agree=True, correct=Ns(rbn=True, baseline=True))]
    metrics.observe_ab("m", "b", "fog", 3, results)
    pair = {"model": "m", "baseline": "b", "corruption": "fog", "severity": "3"}
    assert value(metrics, "rbn_serve_ab_comparisons_total", agree="true", **pair) == 2
    assert value(metrics, "rbn_serve_ab_comparisons_total", agree="false", **pair) == 1
    assert value(metrics, "rbn_serve_ab_labelled_total", model="m", corruption="fog", severity="3") == 2
    assert value(metrics, "rbn_serve_ab_correct_total", model="m", arm="rbn", corruption="fog", severity="3") == 2
    assert value(metrics, "rbn_serve_ab_correct_total", model="m", arm="baseline", corruption="fog", severity="3") == 1


def test_batch_observer_by_hand(metrics):
    observe = metrics.batch_observer("m")
    observe(3, 0.02, [0.001, 0.004])
    observe(5, 0.03, [0.002])
    assert value(metrics, "rbn_serve_batch_size_count", model="m") == 2
    assert value(metrics, "rbn_serve_batch_size_sum", model="m") == 8
    assert value(metrics, "rbn_serve_batch_size_bucket", model="m", le="4.0") == 1
    assert value(metrics, "rbn_serve_inference_duration_seconds_sum", model="m") == pytest.approx(0.05)
    assert value(metrics, "rbn_serve_queue_wait_seconds_count", model="m") == 3
    assert value(metrics, "rbn_serve_queue_wait_seconds_sum", model="m") == pytest.approx(0.007)


def test_observe_prediction_by_hand(metrics):
    metrics.observe_prediction("m", "Bag", 3.0, True)
    metrics.observe_prediction("m", "Bag", 0.2, False)
    metrics.observe_prediction("m", "Coat", None, False)  # uncalibrated: counted as a prediction only
    assert value(metrics, "rbn_serve_predictions_total", model="m", label="Bag") == 2
    assert value(metrics, "rbn_serve_predictions_total", model="m", label="Coat") == 1
    assert value(metrics, "rbn_serve_ood_score_count", model="m") == 2
    assert value(metrics, "rbn_serve_ood_score_bucket", model="m", le="0.5") == 1
    assert value(metrics, "rbn_serve_ood_flagged_total", model="m") == 1
