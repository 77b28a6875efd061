"""A real Prometheus server scrapes /metrics; its query API returns the service's request and A/B series."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from tests.service.svc_support import RBN, SAMPLES, ServiceProcess, free_port

PROMETHEUS = Path("/usr/bin/prometheus")


@contextmanager
def running_prometheus(target_url: str, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping ``target_url`` every second; yields its own URL."""
    if not PROMETHEUS.exists():
        pytest.fail("Debian's prometheus package is not installed (apt-get install -y prometheus); ./run.sh test installs it",
                    pytrace=False)
    target = target_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: rbn-serve\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@pytest.fixture
def prometheus(server, tmp_path):
    with running_prometheus(server.url, tmp_path) as url:
        yield url


def query(url: str, promql: str) -> list[dict]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success"
    return body["data"]["result"]


# Prometheus starts its TSDB, then scrapes every second: seconds on a quiet machine, but a fresh clone on
# two loaded cores once needed more than 45 s. A bounded wait on the condition itself, well inside the
# suite's per-test timeout (pyproject.toml), rather than a short fixed one.
PROMETHEUS_WAIT_S = 150.0


def wait_for(url: str, promql: str, timeout: float = PROMETHEUS_WAIT_S,
             until: Callable[[list[dict]], bool] = bool) -> list[dict]:
    """The query's result once ``until(result)`` holds (default: any series); AssertionError with the
    last result after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    result: list[dict] | str = "no answer"
    while True:
        try:
            result = query(url, promql)
            if until(result):
                return result
        except httpx.HTTPError as exc:
            result = f"no answer ({exc!r})"
        if time.monotonic() >= deadline:
            raise AssertionError(f"Prometheus: {promql!r} not as expected after {timeout} s; last result: {result}")
        time.sleep(0.5)


def test_prometheus_scrapes_service_series(client, prometheus, fmnist_samples):
    _, data, label = fmnist_samples[0]
    for _ in range(3):
        assert client.post("/predict", content=data, headers={"Content-Type": "image/png"}).status_code == 200
        r = client.post("/ab", content=data, headers={"Content-Type": "image/png"},
                        params={"corruption": "fog", "severity": 2, "label": str(label)})
        assert r.status_code == 200

    up = wait_for(prometheus, 'up{job="rbn-serve"} == 1')
    assert up[0]["metric"]["job"] == "rbn-serve"
    requests = wait_for(prometheus, f'rbn_serve_requests_total{{route="/predict",model="{RBN}",status="2xx"}}')
    assert float(requests[0]["value"][1]) >= 3
    ab = wait_for(prometheus, f'sum by (corruption, severity) (rbn_serve_ab_comparisons_total{{model="{RBN}",corruption="fog"}})')
    rows = {row["metric"]["severity"]: float(row["value"][1]) for row in ab}  # other tests share the server
    assert all(row["metric"]["corruption"] == "fog" for row in ab) and rows.get("2", 0) >= 3, ab
    correct = wait_for(prometheus, f'rbn_serve_ab_labelled_total{{model="{RBN}",corruption="fog"}}')
    assert float(correct[0]["value"][1]) >= 3
    p50 = 'histogram_quantile(0.5, sum by (le) (rate(rbn_serve_request_duration_seconds_bucket{route="/predict"}[1m])))'
    latency = wait_for(prometheus, p50)
    assert latency  # the histogram is queryable
    assert wait_for(prometheus, f'rbn_serve_model_info{{model="{RBN}",provider="cpu"}}')


def test_prometheus_sees_every_worker_summed(served_repo, tmp_path):
    """With --workers 2 each scrape reaches one worker; the series must still count every request."""
    server = ServiceProcess(served_repo, tmp_path / "server.log", workers=2).wait_ready()
    try:
        image = (SAMPLES / "fashion-mnist" / "0_ankle-boot.png").read_bytes()
        for _ in range(20):  # a connection each: the kernel hands them to either worker
            with httpx.Client(timeout=30) as one:
                r = one.post(server.url + "/predict", content=image, headers={"Content-Type": "image/png"})
                assert r.status_code == 200
        with running_prometheus(server.url, tmp_path) as url:
            series = f'rbn_serve_requests_total{{route="/predict",model="{RBN}",status="2xx"}}'
            # the condition itself, not a first sample: a scrape that reached Prometheus late still counts all 20
            found = wait_for(url, series, until=lambda r: len(r) == 1 and float(r[0]["value"][1]) == 20)
            assert len(found) == 1 and float(found[0]["value"][1]) == 20
            assert wait_for(url, "rbn_serve_ready == 1")  # the minimum over the workers: both are ready
            assert len(wait_for(url, f'rbn_serve_model_info{{model="{RBN}"}}')) == 1
    finally:
        assert server.stop() == 0
