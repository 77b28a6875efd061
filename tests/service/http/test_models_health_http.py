"""GET /models, /models/{name}, /healthz, /readyz and the OpenAPI schema."""

from __future__ import annotations

from tests.service.svc_support import BN, BROKEN, RBN

from rbn.experiments.data import LABELS
from service.http.routes.schemas.operations import ModelInfo, ModelsResponse


def test_models_list(client):
    r = client.get("/models")
    assert r.status_code == 200
    answer = ModelsResponse.model_validate(r.json())
    assert answer.primary == RBN
    by_name = {m.name: m for m in answer.models}
    assert set(by_name) == {RBN, BN}
    rbn, bn = by_name[RBN], by_name[BN]
    assert rbn.primary and not bn.primary
    assert (rbn.norm, rbn.baseline, rbn.baseline_loaded) == ("rbn", BN, True)
    assert (bn.norm, bn.baseline, bn.baseline_loaded) == ("bn", None, False)
    assert rbn.labels == list(LABELS)
    assert rbn.input["channels"] == 1 and rbn.input["height"] == 28 and rbn.input["resize"] == "fit"
    assert rbn.provider == "cpu" and rbn.max_batch_size == 16
    assert rbn.ood is not None and rbn.ood.clean_quantile == 0.95
    assert len(rbn.stats_layers) == 21
    # the broken bundle is reported, not served
    assert BROKEN in answer.unavailable and "config.pbtxt" in answer.unavailable[BROKEN]


def test_one_model(client):
    r = client.get(f"/models/{BN}")
    assert r.status_code == 200
    assert ModelInfo.model_validate(r.json()).name == BN
    missing = client.get(f"/models/{BROKEN}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_health(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and sorted(ready.json()["models"]) == sorted([RBN, BN])


def test_metrics_exposition(client):
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    info = f'rbn_serve_model_info{{baseline="{BN}",model="{RBN}",norm="rbn",provider="cpu",version="1"}} 1.0'
    expected = ("rbn_serve_ready 1.0", info, "rbn_serve_bundle_errors 1.0", f'rbn_serve_queue_depth{{model="{RBN}"}}',
                "rbn_serve_requests_in_flight", f'rbn_serve_batches_in_flight{{model="{BN}"}}', "process_resident_memory_bytes")
    for name in expected:
        assert name in text, name
    assert "rbn_serve_gpu_" not in text  # CPU only: no GPU series at all
    assert "_created" not in text


def test_openapi_documents_every_route(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [("/predict", "post"), ("/ab", "post"), ("/models", "get"), ("/models/{name}", "get"),
                         ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"), ("/v2", "get"),
                         ("/v2/health/live", "get"), ("/v2/health/ready", "get"), ("/v2/models/{name}", "get"),
                         ("/v2/models/{name}/ready", "get"), ("/v2/models/{name}/infer", "post"),
                         ("/v2/models/{name}/versions/{version}/infer", "post")]:
        assert method in paths.get(path, {}), (path, method)
    predict = paths["/predict"]["post"]
    assert {"image/*", "multipart/form-data"} <= set(predict["requestBody"]["content"])
    assert {p["name"] for p in predict["parameters"]} == {"model", "top_k"}
    assert {"413", "415", "422", "503"} <= set(predict["responses"])
    ab = paths["/ab"]["post"]
    corruption = next(p for p in ab["parameters"] if p["name"] == "corruption")
    assert "gaussian_noise" in str(schema["components"]["schemas"].get("CorruptionName", corruption))
    components = schema["components"]["schemas"]
    for model in ("PredictResponse", "AbResponse", "InferRequest", "InferResponse", "ModelMetadata"):
        assert model in components, model
    assert components["PredictResponse"].get("examples"), "responses carry examples"
    assert components["InferRequest"].get("examples")
    assert client.get("/docs").status_code == 200
