"""Helpers for the service tests: test bundles, images, real server processes (imported by conftest and tests)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
RBN = "test-resnet20-rbn"
BN = "test-resnet20-bn"
BROKEN = "test-broken"

# Limits of the shared server, small enough to test cheaply.
MAX_BODY = 2 * 1024 * 1024
MAX_PIXELS = 2048 * 2048
MAX_FILES = 16


def write_test_bundles(out: Path) -> None:
    """The paired random-weight bundles (RBN + its BN baseline), as /tmp/mkbundle.py writes them."""
    import torch

    from rbn.bundle import write_bundle
    from rbn.data import LABELS, MEAN, STD
    from rbn.export import export_onnx, inference_model, stats_layers
    from rbn.ood import calibrate
    from rbn.resnet import resnet20

    for norm in ("bn", "rbn"):
        torch.manual_seed(0)
        model = resnet20(norm).eval()
        with torch.no_grad():
            _, stats = inference_model(model)(torch.randn(256, 1, 28, 28))
        name = f"test-resnet20-{norm}"
        write_bundle(out, dict(
            name=name, architecture="resnet20", norm=norm, baseline=BN if norm == "rbn" else None,
            labels=list(LABELS), input=dict(channels=1, height=28, width=28, mean=[MEAN], std=[STD]),
            stats_layers=stats_layers(model, (1, 28, 28)), ood=calibrate(stats.numpy()).model_dump(),
        ), export_onnx(model))


def encode(array: np.ndarray, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **params)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """``python -m service serve`` in a subprocess on an ephemeral loopback port."""

    def __init__(self, repo: Path, log_path: Path, **settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = [sys.executable, "-m", "service", "serve", "--model-repository", str(repo),
                "--host", "127.0.0.1", "--port", str(self.port), "--providers", "cpu"]
        for key, value in settings.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")}
        env["PYTHONPATH"] = str(ROOT)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def start_server(repo: Path, tmp: Path, **settings) -> ServiceProcess:
    return ServiceProcess(repo, tmp / "server.log", **settings).wait_ready()
