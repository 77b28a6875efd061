"""The Open Inference Protocol v2 routes, with tritonclient's HTTP client and as raw JSON."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import tritonclient.http as triton
from tests.service.svc_support import BN, RBN
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def v2(server):
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def tensor(x: np.ndarray, binary: bool = True) -> triton.InferInput:
    t = triton.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(x, binary_data=binary)
    return t


X = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)


def test_health_and_metadata_with_tritonclient(v2):
    assert v2.is_server_live() and v2.is_server_ready()
    assert v2.is_model_ready(RBN) and v2.is_model_ready(RBN, "1")
    assert not v2.is_model_ready("nope")
    meta = v2.get_server_metadata()
    assert meta["name"] == "rbn-serve" and "binary_tensor_data" in meta["extensions"]
    model = v2.get_model_metadata(RBN)
    assert model == v2.get_model_metadata(RBN, "1")
    assert model["name"] == RBN and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                                {"name": "rbn_stats", "datatype": "FP32", "shape": [-1, 21]},
                                {"name": "rbn_channel_stats", "datatype": "FP32", "shape": [-1, 784]},
                                {"name": "ood_score", "datatype": "FP32", "shape": [-1, 1]}]


def test_infer_with_tritonclient_binary_json_and_gzip(v2):
    binary = v2.infer(RBN, [tensor(X)], request_id="req-1")
    logits, stats = binary.as_numpy("logits"), binary.as_numpy("rbn_stats")
    assert logits.shape == (3, 10) and stats.shape == (3, 21) and logits.dtype == np.float32
    assert binary.get_response()["id"] == "req-1" and binary.get_response()["model_version"] == "1"
    as_json = v2.infer(RBN, [tensor(X, binary=False)], model_version="1",
                       outputs=[triton.InferRequestedOutput("rbn_stats", binary_data=False)])
    assert as_json.as_numpy("logits") is None
    np.testing.assert_allclose(as_json.as_numpy("rbn_stats"), stats, rtol=1e-6)
    compressed = v2.infer(RBN, [tensor(X)], request_compression_algorithm="gzip")
    np.testing.assert_array_equal(compressed.as_numpy("logits"), logits)


def test_tritonclient_sees_protocol_errors(v2):
    with pytest.raises(InferenceServerException, match="not served"):
        v2.infer("nope", [tensor(X)])
    with pytest.raises(InferenceServerException, match="shape"):
        v2.infer(RBN, [tensor(np.zeros((1, 1, 32, 32), np.float32))])
    with pytest.raises(InferenceServerException, match="no version"):
        v2.infer(RBN, [tensor(X)], model_version="2")


def test_raw_json_request_and_response(client):
    body = {"id": "abc", "inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32",
                                     "data": X[:2].tolist()}]}  # nested data
    r = client.post(f"/v2/models/{RBN}/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    answer = r.json()
    assert set(answer) == {"model_name", "model_version", "id", "outputs"}
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (RBN, "1", "abc")
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert list(outputs) == ["logits", "rbn_stats", "rbn_channel_stats", "ood_score"]  # all, as the protocol says
    assert outputs["logits"]["datatype"] == "FP32" and outputs["logits"]["shape"] == [2, 10]
    assert len(outputs["logits"]["data"]) == 20 and len(outputs["rbn_stats"]["data"]) == 42
    assert outputs["rbn_channel_stats"]["shape"] == [2, 784] and outputs["ood_score"]["shape"] == [2, 1]
    flat = dict(body, inputs=[dict(body["inputs"][0], data=X[:2].ravel().tolist())])
    flat.pop("id")
    again = client.post(f"/v2/models/{RBN}/infer", json=flat).json()
    assert "id" not in again
    assert again["outputs"][0]["data"] == pytest.approx(outputs["logits"]["data"], rel=1e-6)
    only = client.post(f"/v2/models/{BN}/versions/1/infer", json=dict(flat, outputs=[{"name": "logits"}])).json()
    assert [o["name"] for o in only["outputs"]] == ["logits"] and only["model_name"] == BN


def test_raw_health_routes(client):
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{RBN}/ready", f"/v2/models/{RBN}/versions/1/ready"):
        r = client.get(path)
        assert r.status_code == 200 and r.content == b"", path
    assert client.get("/v2").json()["name"] == "rbn-serve"


GOOD_INPUT = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
BAD_REQUESTS = {
    "not json": (b"{nope", 400, "not valid JSON"),
    "no inputs": ({"outputs": []}, 400, "inputs"),
    "wrong input name": ({"inputs": [dict(GOOD_INPUT, name="x")]}, 400, "unknown input"),
    "wrong datatype": ({"inputs": [dict(GOOD_INPUT, datatype="INT8")]}, 400, "FP32"),
    "wrong shape": ({"inputs": [dict(GOOD_INPUT, shape=[1, 3, 28, 28])]}, 400, "shape"),
    "too little data": ({"inputs": [dict(GOOD_INPUT, data=[0.0] * 10)]}, 400, "784"),
    "strings as data": ({"inputs": [dict(GOOD_INPUT, data=["a"] * 784)]}, 400, "numbers"),
    "unknown output": ({"inputs": [GOOD_INPUT], "outputs": [{"name": "probs"}]}, 400, "unknown output"),
    "id not a string": ({"id": 5, "inputs": [GOOD_INPUT]}, 400, "id"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_protocol_error_form(client, case):
    body, status, fragment = BAD_REQUESTS[case]
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.post(f"/v2/models/{RBN}/infer", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()
    assert set(error) == {"error"} and isinstance(error["error"], str)
    assert fragment in error["error"]


def test_unknown_model_and_version(client):
    for path in ("/v2/models/nope", "/v2/models/nope/ready", f"/v2/models/{RBN}/versions/9"):
        r = client.get(path)
        assert r.status_code == 404 and isinstance(r.json()["error"], str), path
    r = client.post("/v2/models/nope/infer", json={"inputs": [GOOD_INPUT]})
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


def test_binary_extension_by_hand(client):
    header = b'{"inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","parameters":{"binary_data_size":3136}}],' \
             b'"parameters":{"binary_data_output":true}}'
    body = header + X[:1].astype("<f4").tobytes()
    r = client.post(f"/v2/models/{RBN}/infer", content=body, headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    length = int(r.headers["Inference-Header-Content-Length"])
    import json

    head = json.loads(r.content[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [40, 84, 3136, 4] and len(r.content) == length + 40 + 84 + 3136 + 4
    logits = np.frombuffer(r.content[length : length + 40], "<f4")
    assert np.isfinite(logits).all()
    # gzip by hand, and a body whose binary part is short
    gz = client.post(f"/v2/models/{RBN}/infer", content=gzip.compress(body),
                     headers={"Inference-Header-Content-Length": str(len(header)), "Content-Encoding": "gzip"})
    assert gz.status_code == 200 and gz.content == r.content
    truncated = client.post(f"/v2/models/{RBN}/infer", content=gzip.compress(body)[:-8],  # no gzip trailer
                            headers={"Inference-Header-Content-Length": str(len(header)), "Content-Encoding": "gzip"})
    assert truncated.status_code == 400 and "truncated compressed body" in truncated.json()["error"]
    short = client.post(f"/v2/models/{RBN}/infer", content=body[:-4],
                        headers={"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"]
