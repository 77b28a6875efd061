"""harness/procs.py: a server process that never becomes ready is not left running."""

from __future__ import annotations

import sys

import pytest

from harness.procs import ServerProcess, free_port

NEVER_READY = "import time; time.sleep(120)"  # runs, but nothing answers /readyz


def test_a_server_that_never_gets_ready_is_stopped(tmp_path):
    server = ServerProcess([sys.executable, "-c", NEVER_READY], free_port(), tmp_path / "server.log")
    server.ready_timeout, server.stop_timeout = 0.5, 5.0
    with pytest.raises(TimeoutError, match="not ready after"):
        server.wait_ready()
    assert server.proc.poll() is not None and server._log.closed


def test_a_server_that_exits_early_is_reported_with_its_log(tmp_path):
    server = ServerProcess([sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"], free_port(),
                           tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="exited with code 3:\nbad flag"):
        server.wait_ready(10)
    assert server._log.closed
