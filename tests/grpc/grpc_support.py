"""Helpers for the gRPC tests: a real ``rbn-serve serve`` with its gRPC port on (the shipped bundles, through
tests.reliability.rel_support's server), tritonclient.grpc clients, raw calls with metadata, /metrics lines."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as tgrpc

from harness.procs import free_port, http
from tests.reliability.rel_support import RBN, Server

SERVICE = "inference.GRPCInferenceService"
X = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)


class GrpcServer(Server):
    """The shipped bundles served over HTTP and gRPC (both on free ports)."""

    def __init__(self, tmp: Path, **settings) -> None:
        self.grpc_port = settings.pop("grpc_port", None) or free_port()
        super().__init__(tmp, grpc_port=self.grpc_port, **settings)
        self.target = f"127.0.0.1:{self.grpc_port}"

    def client(self) -> tgrpc.InferenceServerClient:
        return tgrpc.InferenceServerClient(self.target)


def start(tmp: Path, **settings) -> GrpcServer:
    return GrpcServer(tmp, **settings).wait_ready()


def tensor(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> tgrpc.InferInput:
    t = tgrpc.InferInput(name, list(x.shape), datatype)
    t.set_data_from_numpy(x)
    return t


def metrics(server: Server) -> str:
    return http("GET", server.url + "/metrics")[1].decode()


def metric(text: str, series: str) -> float:
    """The value of one exposition line (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def raw_call(target: str, method: str, payload: bytes, metadata=(), timeout: float = 10.0):
    """``payload`` as the request bytes of ``method`` (no stub, no serializer): (status code, details,
    answer bytes or None, trailing metadata dict)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            answer, state = call.with_call(payload, metadata=metadata, timeout=timeout)
            return grpc.StatusCode.OK, "", answer, dict(state.trailing_metadata())
        except grpc.RpcError as exc:
            return exc.code(), exc.details(), None, dict(exc.trailing_metadata() or ())


__all__ = ["RBN", "SERVICE", "X", "GrpcServer", "metric", "metrics", "raw_call", "start", "tensor"]
