"""The gRPC server's process life: every --workers worker serves it, a taken port fails the start at once
(SO_REUSEPORT would otherwise let a second server share it), SIGTERM turns health NOT_SERVING and exits 0,
and a flood of bad messages on the gRPC port does not stall the HTTP /healthz."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_support import RBN, SERVICE, X, GrpcServer, start, tensor

from harness.procs import process_tree
from tests.reliability.rel_support import Probe


def test_workers_all_serve_grpc(tmp_path):
    server = start(tmp_path, workers=2)
    try:
        answers = [server.client().infer(RBN, [tensor(X)]).as_numpy("logits") for _ in range(8)]
        assert all(a.tobytes() == answers[0].tobytes() for a in answers)
        # both workers hold the gRPC port (SO_REUSEPORT): each worker process has a socket listening on it
        workers = [pid for pid in process_tree(server.pid)[1:] if _parent(pid) == server.pid]  # not their helpers
        assert len(workers) == 2
        # a worker listens only once its models are warm, and readiness answers when the first one is:
        # wait (bounded) for the second
        deadline = time.monotonic() + 90
        while (holders := {pid for pid in workers if _listens(pid, server.grpc_port)}) != set(workers):
            assert time.monotonic() < deadline, f"only {holders} of {workers} listen on the gRPC port"
            time.sleep(0.2)
    finally:
        assert server.stop() == 0


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _listens(pid: int, port: int) -> bool:
    """Whether ``pid`` holds a socket listening on ``port`` (from /proc: its fds' inodes against /proc/net/tcp)."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A" and fields[9] in inodes:
                return True
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_grpc_port_in_use_fails_the_start(tmp_path, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = GrpcServer(tmp_path, grpc_port=port, workers=workers)
        try:
            code = server.proc.wait(90)
        finally:
            server.stop()
        assert code == 1
        assert f"cannot start: cannot listen for gRPC on 127.0.0.1:{port}" in server.log()


def test_sigterm_turns_health_not_serving_and_exits_0(tmp_path):
    server = start(tmp_path, drain_delay_s=2)
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
        server.proc.send_signal(15)
        time.sleep(0.5)  # within the drain delay: still answering, no longer serving
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not server.client().is_server_ready()
    assert server.proc.wait(60) == 0


def test_a_flood_of_bad_messages_does_not_stall_http(tmp_path):
    """8 threads send malformed and invalid gRPC requests for 4 s; /healthz, polled from another process,
    never waits long, and the server answers a good call afterwards."""
    server = start(tmp_path)
    stop = threading.Event()
    sent = [0] * 8
    garbage = np.random.default_rng(1).bytes(4096)
    wrong = tensor(np.zeros((2, 1, 14, 28), np.float32))

    def flood(index: int) -> None:
        client = server.client()
        with grpc.insecure_channel(server.target) as channel:
            call = channel.unary_unary(f"/{SERVICE}/ModelInfer")
            while not stop.is_set():
                try:
                    if index % 2:
                        call(garbage[: 64 + sent[index] % 4000], timeout=5)
                    else:
                        client.infer(RBN, [wrong])
                except Exception:  # noqa: BLE001 - every one of them is refused: that is the point
                    pass
                sent[index] += 1

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(8)]
    try:
        with Probe(server.port) as probe:
            for t in threads:
                t.start()
            time.sleep(4)
            stop.set()
            for t in threads:
                t.join(30)
        assert sum(sent) > 200
        assert not probe.failures and probe.count > 20
        assert probe.worst < 1.0, f"/healthz waited {probe.worst:.3f} s during the flood ({sum(sent)} bad calls)"
        assert server.client().infer(RBN, [tensor(X)]).as_numpy("logits").shape == (3, 10)
    finally:
        stop.set()
        assert server.stop() == 0
