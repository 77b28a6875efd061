"""The gRPC front end with clients nobody here wrote (tritonclient.grpc, its asyncio client and stream,
grpc.health.v1, reflection): the same answers as REST, byte for byte."""

from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_support import RBN, SERVICE, X, metric, metrics, raw_call, tensor
from tritonclient.utils import InferenceServerException

from service.grpc import grpc_service_pb2 as pb

OUTPUTS = ["logits", "rbn_stats", "rbn_channel_stats", "ood_score"]


def rest_infer(server, x: np.ndarray, outputs=None):
    client = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    t = thttp.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(x, binary_data=True)
    wanted = None if outputs is None else [thttp.InferRequestedOutput(n, binary_data=True) for n in outputs]
    return client.infer(RBN, [t], outputs=wanted)


def test_health_and_metadata(server):
    client = server.client()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(RBN) and client.is_model_ready(RBN, "1")
    meta = client.get_server_metadata()
    assert meta.name == "rbn-serve" and meta.version
    model = client.get_model_metadata(RBN, as_json=True)
    assert model["name"] == RBN and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}]
    assert [o["name"] for o in model["outputs"]] == OUTPUTS
    config = client.get_model_config(RBN, as_json=True)["config"]
    assert config["name"] == RBN and config["max_batch_size"] == 16
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["1", "28", "28"]}]


def test_infer_equals_rest_byte_for_byte(server):
    """Every output (logits, rbn_stats, rbn_channel_stats, ood_score): the same bytes as the REST binary path."""
    over_grpc = server.client().infer(RBN, [tensor(X)], request_id="req-29")
    over_rest = rest_infer(server, X)
    answer = over_grpc.get_response()
    assert answer.id == "req-29" and answer.model_name == RBN and answer.model_version == "1"
    assert [o.name for o in answer.outputs] == OUTPUTS
    for name in OUTPUTS:
        got = over_grpc.as_numpy(name)
        assert got.dtype == np.float32 and got.shape[0] == 3
        assert got.tobytes() == over_rest.as_numpy(name).tobytes(), name


def test_named_outputs_and_typed_contents(server):
    client = server.client()
    only = client.infer(RBN, [tensor(X)], outputs=[tgrpc.InferRequestedOutput("ood_score"),
                                                   tgrpc.InferRequestedOutput("logits")])
    assert [o.name for o in only.get_response().outputs] == ["ood_score", "logits"]
    assert only.as_numpy("logits").tobytes() == rest_infer(server, X, ["logits"]).as_numpy("logits").tobytes()
    # the protocol's typed form (contents.fp32_contents) instead of raw_input_contents: the same answer
    request = pb.ModelInferRequest(model_name=RBN, id="typed")
    request.inputs.add(name="input", datatype="FP32", shape=X.shape, contents=pb.InferTensorContents(fp32_contents=X.ravel()))
    code, _, answer, trailing = raw_call(server.target, "ModelInfer", request.SerializeToString())
    assert code == grpc.StatusCode.OK
    typed = pb.ModelInferResponse.FromString(answer)
    assert typed.id == "typed" and typed.raw_output_contents[0] == only.as_numpy("logits").tobytes()
    assert trailing["x-request-id"]


def test_request_id_in_trailing_metadata(server):
    request = pb.ModelInferRequest(model_name=RBN, raw_input_contents=[X[:1].tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    code, _, _, trailing = raw_call(server.target, "ModelInfer", request.SerializeToString(),
                                    metadata=[("x-request-id", "trace-abc.1")])
    assert code == grpc.StatusCode.OK and trailing["x-request-id"] == "trace-abc.1"
    code, _, _, trailing = raw_call(server.target, "ModelInfer", request.SerializeToString(),
                                    metadata=[("x-request-id", "has spaces, commas")])
    assert code == grpc.StatusCode.OK and len(trailing["x-request-id"]) == 16  # not ours to echo: a fresh one


def test_unsupported_rpcs_are_unimplemented(server):
    client = server.client()
    for call in (client.get_model_repository_index, lambda: client.load_model(RBN), lambda: client.unload_model(RBN),
                 client.get_system_shared_memory_status, lambda: client.get_inference_statistics(RBN)):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "StatusCode.UNIMPLEMENTED"
    assert client.is_model_ready(RBN)  # nothing was unloaded


def test_stream_answers_in_order_and_reports_errors_in_band(server):
    client = server.client()
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(RBN, [tensor(X)], request_id="s1")
        client.async_stream_infer(RBN, [tensor(X[:, :, :14], )], request_id="s2")  # wrong shape
        client.async_stream_infer(RBN, [tensor(X[:1])], request_id="s3")
        got = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    assert got[0][1] is None and got[0][0].get_response().id == "s1"
    assert got[0][0].as_numpy("logits").tobytes() == rest_infer(server, X, ["logits"]).as_numpy("logits").tobytes()
    assert got[1][0] is None and "expected [batch, 1, 28, 28]" in str(got[1][1])
    assert got[2][1] is None and got[2][0].as_numpy("logits").shape == (1, 10)


def test_asyncio_client(server):
    async def run():
        async with tgrpc_aio.InferenceServerClient(server.target) as client:
            assert await client.is_server_ready()
            results = await asyncio.gather(*(client.infer(RBN, [tensor(X[i:i + 1])]) for i in range(3)))
            return np.concatenate([r.as_numpy("logits") for r in results])

    logits = asyncio.run(run())
    assert np.allclose(logits, rest_infer(server, X, ["logits"]).as_numpy("logits"), atol=1e-5)


def test_health_checking_and_reflection(server):
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answers[0].list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
        found = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=f"{SERVICE}")])))
        assert found[0].file_descriptor_response.file_descriptor_proto


def test_metrics_count_grpc_calls_by_method(server):
    before = metrics(server)
    ok = f'rbn_serve_requests_total{{model="{RBN}",route="/{SERVICE}/ModelInfer",status="2xx"}}'
    bad = f'rbn_serve_rejected_requests_total{{reason="invalid_tensor",route="/{SERVICE}/ModelInfer"}}'
    client = server.client()
    client.infer(RBN, [tensor(X)])
    with pytest.raises(InferenceServerException):
        client.infer(RBN, [tensor(X.astype(np.float64), datatype="FP64")])
    after = metrics(server)
    assert metric(after, ok) == metric(before, ok) + 1
    assert metric(after, bad) == metric(before, bad) + 1
    assert f'rbn_serve_request_duration_seconds_count{{model="{RBN}",route="/{SERVICE}/ModelInfer"}}' in after
