"""``--workers N``: real server processes on one port, their metrics summed, a dead worker replaced,
SIGTERM stopping them all, and start-up failures ending the whole server with one clear line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from tests.service.svc_support import RBN, ROOT, ServiceProcess

from service.core.config import Settings
from service.http.workers import worker_settings
from harness.procs import process_tree

SAMPLE = (ROOT / "samples" / "fashion-mnist" / "0_ankle-boot.png").read_bytes()


def children(pid: int) -> set[int]:
    """The worker processes of the supervisor ``pid``: its own children (a worker's decode processes are
    further down the tree)."""
    return {p for p in process_tree(pid)[1:] if _parent(p) == pid}


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None  # gone meanwhile


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def metric(text: str, name: str, **labels) -> float:
    """The value of one series in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def shared_folder(server: ServiceProcess) -> Path:
    """The folder where the workers' metric values meet (the supervisor's first log line names it)."""
    return Path(re.search(r"metric values in (\S+)\)", server.log()).group(1))


def predict_on_new_connections(url: str, count: int) -> list[int]:
    """``count`` requests, each on a connection of its own, so the kernel hands them to either worker."""
    statuses = []
    for _ in range(count):
        with httpx.Client(timeout=30) as client:
            statuses.append(client.post(url + "/predict", content=SAMPLE, headers={"Content-Type": "image/png"}).status_code)
    return statuses


@pytest.fixture
def two_workers(served_repo, tmp_path):
    server = ServiceProcess(served_repo, tmp_path / "server.log", workers=2)
    try:
        server.wait_ready()
        wait_for(lambda: len(children(server.pid)) == 2, 30, "two worker processes")
        # /readyz answers from one worker: wait until every worker reports ready in the summed gauge
        wait_for(lambda: len(re.findall(r"ready: serving", server.log())) == 2, 60, "both workers ready")
        yield server
    finally:  # a failed wait must not leave the server running
        server.stop()


def test_two_workers_answer_on_one_port_and_metrics_sum_over_both(two_workers):
    server = two_workers
    statuses = predict_on_new_connections(server.url, 24)
    assert statuses == [200] * 24
    workers = children(server.pid)
    shared = shared_folder(server)
    assert shared.parent == Path(tempfile.gettempdir()) and shared.is_dir()
    assert {int(p.stem.rsplit("_", 1)[1]) for p in shared.glob("counter_*.db")} == workers

    def scraped() -> str:
        time.sleep(1.2)  # live gauges are published every second
        return httpx.get(server.url + "/metrics", timeout=10).text

    text = scraped()
    assert metric(text, "rbn_serve_requests_total", route="/predict", status="2xx", model=RBN) == 24
    assert metric(text, "rbn_serve_batch_size_count", model=RBN) >= 1
    assert metric(text, "rbn_serve_ready") == 1
    assert metric(text, "rbn_serve_requests_in_flight") == 0
    assert metric(text, "rbn_serve_model_info", model=RBN) == 1  # one series, not one per worker
    assert len(re.findall(r"^rbn_serve_model_info\{[^}]*model=\"%s\"" % RBN, text, re.M)) == 1
    assert "process_resident_memory_bytes" not in text  # one process's figure would mislead


def test_a_killed_worker_is_replaced_and_its_counts_are_kept(two_workers):
    server = two_workers
    assert predict_on_new_connections(server.url, 6) == [200] * 6
    before = children(server.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (c := children(server.pid)) and len(c) == 2 and victim not in c and c, 30,
                     "a replacement worker")
    assert len(after & before) == 1
    wait_for(lambda: "starting another" in server.log(), 10, "the supervisor's log line")
    assert "SIGKILL" in server.log()
    wait_for(lambda: server.log().count("ready: serving") == 3, 60, "the new worker ready")
    assert predict_on_new_connections(server.url, 6) == [200] * 6
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert metric(text, "rbn_serve_requests_total", route="/predict", status="2xx", model=RBN) == 12


def test_sigterm_stops_every_worker_and_exits_0(served_repo, tmp_path):
    server = ServiceProcess(served_repo, tmp_path / "server.log", workers=2).wait_ready()
    workers = wait_for(lambda: len(c := children(server.pid)) == 2 and c, 30, "two workers")
    shared = shared_folder(server)
    assert shared.is_dir()
    assert server.stop() == 0 and not server.killed
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert not shared.exists(), "the shared metrics folder outlived the server"
    assert server.log().count("Finished server process") == 2


def test_ctrl_c_reaches_every_worker_as_sigint_and_skips_the_drain_delay(served_repo, tmp_path):
    """The workers sit in their own process group: the parent passes Ctrl-C on as SIGINT, so no worker waits the
    (default, 5 s) drain delay that SIGTERM gets."""
    server = ServiceProcess(served_repo, tmp_path / "server.log", workers=2, drain_delay_s=None).wait_ready()
    wait_for(lambda: len(c := children(server.pid)) == 2 and c, 30, "two workers")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(60) == 0
    assert time.monotonic() - started < Settings.model_fields["drain_delay_s"].default
    server.stop()
    assert server.log().count("signal SIGINT: draining (delay 0.0 s") == 2


def test_a_worker_that_cannot_start_stops_the_server_with_exit_1(served_repo, tmp_path):
    server = ServiceProcess(served_repo, tmp_path / "server.log", workers=2, primary_model="no-such-model")
    assert server.proc.wait(60) == 1
    log = server.log()
    lines = [line for line in log.splitlines() if "cannot start:" in line]  # both workers fail; one says why
    assert len(lines) == 1 and "primary model 'no-such-model' is not among the valid bundles" in lines[0], log
    assert "could not start; stopping the other workers" in log and "Traceback" not in log


def test_a_port_in_use_fails_once_with_one_clear_line(served_repo, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [sys.executable, "-m", "service", "serve", "--model-repository", str(served_repo),
                "--host", "127.0.0.1", "--port", str(port), "--providers", "cpu", "--workers", "2"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")} | {"PYTHONPATH": str(ROOT)}
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0] and "in use" in lines[0]
    assert "Started server process" not in done.stderr  # no worker was forked


def test_each_worker_takes_its_share_of_the_cpus_for_onnx_runtime(tmp_path, monkeypatch):
    monkeypatch.setattr("service.http.workers.available_cpus", lambda: 8)
    shares = {n: worker_settings(Settings(model_repository=tmp_path, workers=n)).intra_op_threads for n in (1, 2, 4, 8, 16)}
    assert shares == {1: 7, 2: 3, 4: 2, 8: 1, 16: 1}  # default_threads of 8, 4, 2, 1, 1 CPUs: each has its own loop
    chosen = Settings(model_repository=tmp_path, workers=4, intra_op_threads=3)
    assert worker_settings(chosen).intra_op_threads == 3  # an explicit setting is kept


def test_workers_must_be_at_least_one(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        Settings(model_repository=tmp_path, workers=0)

