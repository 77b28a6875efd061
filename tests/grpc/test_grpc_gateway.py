"""The compose gateway's gRPC part (docker/haproxy/haproxy.cfg, frontend ``grpc`` and backend ``rbn_serve_grpc``)
in front of two real servers on loopback: tritonclient.grpc works through it unchanged, and calls sent over
one client connection reach both replicas (HTTP/2 on both sides balances per call, not per connection)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from grpc_support import RBN, SERVICE, X, metric, metrics, start, tensor
from tritonclient.utils import InferenceServerException

from harness.procs import free_port

CONFIG = Path(__file__).resolve().parents[2] / "docker" / "haproxy" / "haproxy.cfg"


def block(text: str, header: str) -> list[str]:
    """The lines of one section (``frontend grpc``) of an HAProxy configuration."""
    lines = text.splitlines()
    start_at = lines.index(header)
    body = []
    for line in lines[start_at + 1:]:
        if line and not line[0].isspace():
            break
        body.append(line)
    return [header, *body]


def local_config(front: int, servers: list[tuple[int, int]]) -> str:
    """The shipped gRPC frontend and backend, with loopback addresses for Docker's names: the template of
    replicas becomes one line per server (its gRPC port, its HTTP port for the check), nothing else changes."""
    text = CONFIG.read_text()
    frontend = block(text, "frontend grpc")
    backend = block(text, "backend rbn_serve_grpc")
    assert any(re.fullmatch(r"\s+bind :8001 proto h2", line) for line in frontend)
    frontend = [re.sub(r"bind :8001", f"bind 127.0.0.1:{front}", line) for line in frontend]
    template = next(line for line in backend if "server-template" in line)
    default = next(line for line in backend if line.strip().startswith("default-server"))
    assert "check port 8000" in default and " proto h2" in template
    default = default.replace("check port 8000", "check").replace(" resolvers docker resolve-prefer ipv4 init-addr none", "")
    lines = [line for line in backend if line not in (template,)]
    lines[lines.index(next(line for line in lines if line.strip().startswith("default-server")))] = default
    options = template.split("api:8001", 1)[1].strip()  # proto h2, check-proto h1: as shipped
    lines += [f"    server api-{i} 127.0.0.1:{grpc} {options} port {http}" for i, (grpc, http) in enumerate(servers)]
    defaults = block(text, "defaults")
    return "\n".join(["global", "    maxconn 256", *defaults, *frontend, *lines]) + "\n"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    servers = [start(tmp_path_factory.mktemp(f"replica{i}")) for i in range(2)]
    yield servers
    for server in servers:
        server.stop()


def test_grpc_through_the_gateway_reaches_every_replica(replicas, tmp_path):
    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is installed by run.sh (Debian package)"
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(local_config(front, [(s.grpc_port, s.port) for s in replicas]))
    proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import tritonclient.grpc as tgrpc

        client = tgrpc.InferenceServerClient(f"127.0.0.1:{front}")
        deadline = time.monotonic() + 30
        while True:  # until the checks have marked the replicas up
            try:
                client.infer(RBN, [tensor(X)])
                break
            except InferenceServerException:
                assert time.monotonic() < deadline and proc.poll() is None, "the gateway never answered"
                time.sleep(0.5)
        series = f'rbn_serve_requests_total{{model="{RBN}",route="/{SERVICE}/ModelInfer",status="2xx"}}'
        before = [metric(metrics(s), series) for s in replicas]
        answers = []
        for _ in range(40):  # one client, one connection to the gateway
            answers.append(client.infer(RBN, [tensor(X[:1])]).as_numpy("logits"))
        after = [metric(metrics(s), series) for s in replicas]
        served = [a - b for a, b in zip(after, before, strict=True)]
        assert sum(served) == 40 and all(n > 0 for n in served), served
        assert all(np.array_equal(a, answers[0]) for a in answers)
    finally:
        proc.terminate()
        proc.wait(10)
