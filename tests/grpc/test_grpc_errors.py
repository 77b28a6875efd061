"""Errors over gRPC, each mapped once from the core's error to a gRPC status, with the REST side's message:
API key, unknown model, wrong datatype and shape, oversize, deadline, cancellation; malformed protobuf bytes."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from grpc_support import RBN, SERVICE, X, metric, metrics, raw_call, start, tensor
from tritonclient.utils import InferenceServerException

from harness.procs import http
from service.grpc import grpc_service_pb2 as pb

KEY = "grpc-test-key-29"
BEARER = {"authorization": f"Bearer {KEY}"}
MAX_MESSAGE = 64 * 1024


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    with start(tmp_path_factory.mktemp("grpc-keyed"), api_key=KEY, grpc_max_message_bytes=MAX_MESSAGE) as proc:
        yield proc


def status_of(call) -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status(), err.value.message()


def rest_message(server, x: np.ndarray, datatype: str = "FP32", model: str = RBN) -> str:
    client = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    t = thttp.InferInput("input", list(x.shape), datatype)
    t.set_data_from_numpy(x, binary_data=True)
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [t], headers=dict(BEARER))  # (tritonclient.http adds to the dict it is given)
    return err.value.message()


def test_api_key(keyed):
    client = keyed.client()
    assert client.is_server_live() and client.is_server_ready()  # probes stay open, as /v2/health/* do
    code, message = status_of(lambda: client.infer(RBN, [tensor(X)]))
    assert code == "StatusCode.UNAUTHENTICATED" and "authorization: Bearer" in message
    code, _ = status_of(lambda: client.infer(RBN, [tensor(X)], headers={"authorization": "Bearer wrong-key-123"}))
    assert code == "StatusCode.UNAUTHENTICATED"
    code, _ = status_of(lambda: client.get_model_metadata(RBN))
    assert code == "StatusCode.UNAUTHENTICATED"
    assert client.infer(RBN, [tensor(X)], headers=BEARER).as_numpy("logits").shape == (3, 10)
    # the stream checks the key once, for the whole stream
    errors: list = []
    client.start_stream(callback=lambda result, error: errors.append(error))
    try:
        client.async_stream_infer(RBN, [tensor(X)])
    except InferenceServerException:
        pass  # the server may have ended the stream before this request went out
    wait_until(lambda: errors, 10)
    try:
        client.stop_stream()
    except InferenceServerException:
        pass  # the stream ended with the error already reported
    assert "UNAUTHENTICATED" in str(errors[0])


def test_unknown_model_datatype_and_shape_have_the_rest_messages(keyed):
    client = keyed.client()
    code, message = status_of(lambda: client.infer("nope", [tensor(X)], headers=BEARER))
    assert code == "StatusCode.NOT_FOUND" and message == rest_message(keyed, X, model="nope")
    code, message = status_of(lambda: client.infer(RBN, [tensor(X)], model_version="7", headers=BEARER))
    assert code == "StatusCode.NOT_FOUND" and "no version '7'" in message
    code, message = status_of(lambda: client.get_model_metadata("nope", headers=BEARER))
    assert code == "StatusCode.NOT_FOUND"
    wide = X.astype(np.float64)
    code, message = status_of(lambda: client.infer(RBN, [tensor(wide, datatype="FP64")], headers=BEARER))
    assert code == "StatusCode.INVALID_ARGUMENT" and message == rest_message(keyed, wide, "FP64")
    cut = np.ascontiguousarray(X[:, :, :14])
    code, message = status_of(lambda: client.infer(RBN, [tensor(cut)], headers=BEARER))
    assert code == "StatusCode.INVALID_ARGUMENT" and message == rest_message(keyed, cut)
    code, message = status_of(lambda: client.infer(RBN, [tensor(X, name="pixels")], headers=BEARER))
    assert code == "StatusCode.INVALID_ARGUMENT" and "unknown input 'pixels'" in message
    code, message = status_of(lambda: client.infer(RBN, [tensor(X)], headers=BEARER,
                                                   outputs=[tgrpc.InferRequestedOutput("nope")]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "unknown output 'nope'" in message
    bad = X.copy()
    bad[0, 0, 0, 0] = np.nan
    code, message = status_of(lambda: client.infer(RBN, [tensor(bad)], headers=BEARER))
    assert code == "StatusCode.INVALID_ARGUMENT" and "NaN" in message
    huge = X.copy()
    huge[0, 0, 0, 0] = 3e38
    code, message = status_of(lambda: client.infer(RBN, [tensor(huge)], headers=BEARER))
    assert code == "StatusCode.INVALID_ARGUMENT" and "max_input_magnitude" in message
    # raw bytes that do not match the declared shape
    request = pb.ModelInferRequest(model_name=RBN, raw_input_contents=[X.tobytes()[:-4]])
    request.inputs.add(name="input", datatype="FP32", shape=X.shape)
    code, details, _, trailing = raw_call(keyed.target, "ModelInfer", request.SerializeToString(), metadata=BEARER.items())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs 9408 bytes" in details and trailing["x-request-id"]


def test_oversize_message_is_resource_exhausted(keyed):
    big = np.zeros((32, 1, 28, 28), np.float32)  # 100 kB > the 64 kB limit
    code, message = status_of(lambda: keyed.client().infer(RBN, [tensor(big)], headers=BEARER))
    assert code == "StatusCode.RESOURCE_EXHAUSTED"
    assert keyed.client().is_server_ready()


def test_malformed_protobuf_bytes(keyed):
    """Random and mutated request bytes: every call gets a status (never a hang or a crash), and the server
    still answers a good request afterwards."""
    good = pb.ModelInferRequest(model_name=RBN, raw_input_contents=[X[:1].tobytes()])
    good.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    payload = good.SerializeToString()
    rng = np.random.default_rng(29)
    seen = set()
    with grpc.insecure_channel(keyed.target) as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer")
        for i in range(150):
            if i % 3 == 0:
                data = rng.bytes(int(rng.integers(1, 200)))
            else:
                data = bytearray(payload)
                for _ in range(int(rng.integers(1, 8))):
                    data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
                data = bytes(data[: int(rng.integers(1, len(data) + 1))]) if i % 3 == 2 else bytes(data)
            try:
                call(data, metadata=tuple(BEARER.items()), timeout=10)
                seen.add(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                assert exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED
                seen.add(exc.code())
    assert seen - {grpc.StatusCode.OK}  # the fuzz did reach error paths
    assert grpc.StatusCode.UNAVAILABLE not in seen
    code, _, answer, _ = raw_call(keyed.target, "ModelInfer", payload, metadata=BEARER.items())
    assert code == grpc.StatusCode.OK and len(pb.ModelInferResponse.FromString(answer).raw_output_contents) == 4
    assert http("GET", keyed.url + "/healthz")[0] == 200


# --- deadline and cancellation: a model that runs for as long as the test wants ----------------------
@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    from tests.shipped_bundles import write_test_bundles
    from tests.service.svc_support import write_slow_bundle

    tmp = tmp_path_factory.mktemp("grpc-slow")
    repo = tmp / "models"
    repo.mkdir()
    write_test_bundles(repo)
    write_slow_bundle(repo, repo / "test-resnet20-rbn")
    with start(tmp, model_repository=repo, instances=1, graceful_timeout_s=1, max_queue_wait_s=60,
               max_input_magnitude=1e12) as proc:
        yield proc


SLOW = "test-slow"
STEPS = 1e9  # the slow graph's loop steps for an image holding this value: seconds, not milliseconds


def dropped(server) -> float:
    """gRPC ModelInfer calls the server counted as dropped: deadline passed or client gone."""
    text = metrics(server)
    return sum(metric(text, f'rbn_serve_rejected_requests_total{{reason="{reason}",route="/{SERVICE}/ModelInfer"}}')
               for reason in ("client_disconnected", "deadline_exceeded"))


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_deadline_and_cancellation_drop_the_queued_request(slow):
    """With the one instance busy, a call whose deadline passes and a call its client cancels are both
    counted as dropped by the server at once (their images never run), and other models keep answering."""
    client = slow.client()
    busy = np.zeros((1, 1, 28, 28), np.float32)
    busy[0, 0, 0, 0] = STEPS
    held = client.async_infer(SLOW, [tensor(busy)], callback=lambda result, error: None)  # holds the one instance
    wait_until(lambda: metric(metrics(slow), f'rbn_serve_batches_in_flight{{model="{SLOW}"}}') == 1)
    assert metric(metrics(slow), "rbn_serve_requests_in_flight") == 2  # the held gRPC call and this /metrics request
    zeros = np.zeros((1, 1, 28, 28), np.float32)
    before = dropped(slow)
    started = time.monotonic()
    code, _ = status_of(lambda: client.infer(SLOW, [tensor(zeros)], client_timeout=0.5))
    assert code == "StatusCode.DEADLINE_EXCEEDED"
    wait_until(lambda: dropped(slow) == before + 1, 10)
    outcome: list = []
    cancelled = client.async_infer(SLOW, [tensor(zeros)], callback=lambda result, error: outcome.append(error))
    time.sleep(1.0)  # it reached the server and waits behind the running batch
    assert not outcome
    cancelled.cancel()
    wait_until(lambda: dropped(slow) == before + 2, 10)
    assert time.monotonic() - started < 15  # nothing waited for the slow batch
    assert client.infer("test-resnet20-rbn", [tensor(X)]).as_numpy("logits").shape == (3, 10)
    held.cancel()


def test_a_client_that_leaves_mid_stream(slow):
    """A stream whose client goes away while its request waits behind a busy instance: the server drops the
    request, keeps serving, and counts the call."""
    client = slow.client()
    busy = np.zeros((1, 1, 28, 28), np.float32)
    busy[0, 0, 0, 0] = STEPS
    held = client.async_infer(SLOW, [tensor(busy)], callback=lambda result, error: None)
    wait_until(lambda: metric(metrics(slow), f'rbn_serve_batches_in_flight{{model="{SLOW}"}}') >= 1)
    before = metrics(slow)
    series = f'rbn_serve_rejected_requests_total{{reason="client_disconnected",route="/{SERVICE}/ModelStreamInfer"}}'
    streaming = slow.client()
    streaming.start_stream(callback=lambda result, error: None)
    streaming.async_stream_infer(SLOW, [tensor(np.zeros((1, 1, 28, 28), np.float32))])
    time.sleep(1.0)  # the request waits behind the running batch
    streaming.stop_stream(cancel_requests=True)
    streaming.close()
    wait_until(lambda: metric(metrics(slow), series) == metric(before, series) + 1, 10)
    assert client.infer("test-resnet20-rbn", [tensor(X)]).as_numpy("logits").shape == (3, 10)
    held.cancel()
