"""Helpers for the reliability and access tests: a real server on the shipped bundles, configured
through harness.procs.RbnServe (settings as command-line flags, as every test and benchmark starts it), raw sockets, and a
``/healthz`` probe that records its worst wait. Imported as ``tests.reliability.rel_support``."""

from __future__ import annotations

import socket
from pathlib import Path

from harness.clients import Probe, read_all, status_of  # noqa: F401 - the tests import them from here
from harness.procs import RbnServe, free_port, http  # noqa: F401 - the tests import them from here

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
RBN = "fmnist-resnet20-rbn"
SAMPLE = (ROOT / "samples" / "fashion-mnist" / "0_ankle-boot.png").read_bytes()
SAMPLE_LABEL = "Ankle boot"


class Server(RbnServe):
    """``python -m service serve`` on the shipped bundles (harness.procs.RbnServe: settings as flags)."""

    ready_timeout = 90.0
    poll_interval = 0.1
    stop_timeout = 30.0
    quote_lines = 60

    def __init__(self, tmp: Path, port: int | None = None, log_name: str = "server.log", **settings) -> None:
        super().__init__(tmp / log_name, port=port, **{"model_repository": MODELS, **settings})


def start(tmp: Path, **settings) -> Server:
    return Server(tmp, **settings).wait_ready()


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it or ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s)


def get(url: str, path: str, headers: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    return http("GET", url + path, headers=headers, timeout=timeout)


__all__ = ["MODELS", "RBN", "SAMPLE", "Probe", "Server", "free_port", "get", "http", "raw", "start", "status_of"]
