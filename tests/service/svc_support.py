"""Helpers for the service tests: test bundles, images, real server processes (imported by conftest and tests)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench.procs import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
RBN = "test-resnet20-rbn"
BN = "test-resnet20-bn"
BROKEN = "test-broken"

# Limits of the shared server, small enough to test cheaply.
MAX_BODY = 2 * 1024 * 1024
MAX_PIXELS = 2048 * 2048
MAX_FILES = 16


def encode(array: np.ndarray, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **params)
    return buffer.getvalue()


class ServiceProcess(ServerProcess):
    """``python -m service serve`` in a subprocess on an ephemeral loopback port."""

    ready_timeout = 90.0
    poll_interval = 0.1
    stop_timeout = 30.0
    quote_lines = None  # errors quote the whole log

    def __init__(self, repo: Path, log_path: Path, **settings) -> None:
        port = free_port()
        args = [sys.executable, "-m", "service", "serve", "--model-repository", str(repo),
                "--host", "127.0.0.1", "--port", str(port), "--providers", "cpu"]
        for key, value in settings.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")}
        env["PYTHONPATH"] = str(ROOT)
        super().__init__(args, port, log_path, cwd=ROOT, env=env)


def start_server(repo: Path, tmp: Path, **settings) -> ServiceProcess:
    return ServiceProcess(repo, tmp / "server.log", **settings).wait_ready()
