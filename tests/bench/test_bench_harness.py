"""The benchmark harness runs end to end on a tiny setting and prints the tables it promises.

Benchmarks are scripts, not timed tests: nothing here asserts a speed, only that every row is
there, every server answered (> 0 requests, 0 errors) and the numbers are finite and positive.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# longer than the suite's per-test timeout: end-to-end benchmark runs allow 180 s each, after a server start
pytestmark = pytest.mark.timeout(600)

RBN = "test-resnet20-rbn"  # the bundles tests/bench/conftest.py writes
BN = "test-resnet20-bn"
ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header row starts with ``| first_header |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def positive(cell: str) -> float:
    value = float(re.match(r"[-+]?[0-9.]+", cell).group())
    assert math.isfinite(value) and value > 0, cell
    return value


def test_inprocess_limit(bench_repo):
    done = run_script("bench/inprocess.py", "--model-repository", str(bench_repo), "--batches", "1,2",
                      "--seconds", "0.1", "--min-runs", "3")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("## In-process ONNX Runtime throughput")
    assert "- Machine: " in out and "- Versions: " in out and "- Command: `" in out
    assert "service.core.runtime.ModelRuntime" in out
    rows = table(out, "batch")
    assert [r["batch"] for r in rows] == ["1", "2"]
    for row in rows:
        for name in (RBN, BN):
            positive(row[f"{name}: img/s"])
            p50, p95 = (float(v) for v in row[f"{name}: ms per batch (p50 / p95)"].split(" / "))
            assert 0 < p50 <= p95
    assert f"- {RBN}: best " in out and f"- {BN}: best " in out


def test_serve_bench_end_to_end(bench_repo, tmp_path):
    out_file = tmp_path / "serve.md"
    done = run_script("bench/serve_bench.py", "--model-repository", str(bench_repo), "--concurrency", "1,4",
                      "--warmup", "1", "--duration", "1", "--rss-requests", "200,600", "--rss-concurrency", "4",
                      "--limit-batches", "1,2", "--limit-seconds", "0.1", "--service-arg=--max-batch-size=8",
                      "--out", str(out_file), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out_file.read_text() == out
    assert out.startswith("## Serving throughput")
    assert "- Client: wrk" in out and f"- Model: `{RBN}`, baseline `{BN}`" in out

    limit = table(out, "batch")
    assert [r["batch"] for r in limit] == ["1", "2"]
    rows = table(out, "server")
    keys = [(r["server"], r["route"], r["model"], r["concurrency"]) for r in rows]
    assert keys == [
        ("naive", "/predict", RBN, "1"), ("naive", "/predict", RBN, "4"),
        ("service", "/predict", RBN, "1"), ("service", "/predict", RBN, "4"),
        ("service", "/predict", BN, "4"), ("service", "/ab", f"{RBN} + {BN}", "4"),
    ]
    for r in rows:
        positive(r["req/s"])
        p50, p95, p99 = (positive(r[k]) for k in ("p50 ms", "p95 ms", "p99 ms"))
        assert p50 <= p95 <= p99
        assert r["errors"] == "0"
        positive(r["/ limit"])
        if r["server"] == "service" and r["model"] == RBN:
            positive(r["service / naive"])

    assert re.search(r"- RBN / BN throughput through the service at concurrency 4: [0-9.]+", out)
    assert "- Service / limit at concurrency 4: " in out and "- Service / naive at concurrency 4: " in out
    assert "- p50 at concurrency 1: " in out
    rss = re.search(r"- Resident memory: ([0-9.]+) MB after (\d+) requests, ([0-9.]+) MB after (\d+)", out)
    assert rss, out
    first_mb, first_n, last_mb, last_n = float(rss[1]), int(rss[2]), float(rss[3]), int(rss[4])
    assert 200 <= first_n < last_n and last_n >= 600
    assert first_mb > 10 and last_mb > 10


def test_gpu_bench_cpu_path(tmp_path):
    out_file = tmp_path / "gpu.md"
    done = run_script("bench/gpu_bench.py", "--providers", "cpu", "--arch", "resnet20", "--batches", "1",
                      "--iters", "2", "--seconds", "0.05", "--service-concurrency", "4", "--service-duration", "1",
                      "--service-warmup", "0.5", "--client-processes", "2", "--out", str(out_file), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out_file.read_text() == out
    assert out.startswith("## CPU (harness check, not a GPU figure)")
    assert re.search(r"ORT's profiler: (\d+) of \1 nodes of the RBN graph ran on CPUExecutionProvider", out)
    assert "relative max difference vs torch" in out

    rows = table(out, "graph")
    assert [r["graph"] for r in rows] == ["RBN folded", "BN folded (+ rbn_stats)", "BN ordinary (logits only)"]
    for r in rows:
        positive(r["session.run (numpy)"])
        positive(r["IOBinding"])
        assert r["IOBinding + CUDA graph"] == "n/a (CUDA only)"
    assert "- Latency RBN / BN ordinary (logits only), batch 1: " in out

    assert "provider **cpu**" in out
    (service,) = table(out, "concurrency")
    assert service["concurrency"] == "4"
    positive(service["req/s (= img/s)"])
    assert service["errors"] == "0"


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], capture_output=True).returncode == 0


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_pause_stops_and_resumes_a_job():
    from bench.common import Paused

    job = subprocess.Popen(["sleep", "30"])
    try:
        with Paused([job.pid]) as paused:
            assert paused.stopped == [job.pid]
            assert _state(job.pid) == "T"
        assert _state(job.pid) != "T"
    finally:
        job.kill()
        job.wait()


def test_paused_job_resumes_when_the_benchmark_is_killed():
    job = subprocess.Popen(["sleep", "30"])
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from bench.common import Paused; "
            f"p = Paused([{job.pid}]).__enter__(); print('paused', flush=True); time.sleep(60)")
    bench = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert bench.stdout.readline().strip() == "paused"
        assert _state(job.pid) == "T"
        bench.send_signal(signal.SIGKILL)
        bench.wait(10)
        deadline = time.monotonic() + 10
        while _state(job.pid) == "T" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _state(job.pid) != "T"  # the watchdog sent SIGCONT
    finally:
        bench.kill()
        bench.wait()
        job.kill()
        job.wait()


def test_service_variants_end_to_end(bench_repo, tmp_path):
    root = tmp_path / "checkout"  # another copy of the code, as a git worktree of an older commit would be
    for package in ("service", "rbn"):
        shutil.copytree(Path(__file__).resolve().parents[2] / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    marker = root / "served-from-this-checkout"
    with open(root / "service" / "__init__.py", "a") as init:  # proves the variant really ran this copy
        init.write(f"\nopen({str(marker)!r}, 'a').close()\n")
    done = run_script("bench/service_variants.py", "--model-repository", str(bench_repo),
                      "--variant", "one thread=--intra-op-threads 1", "--variant", f"checkout=@{root} --intra-op-threads 2",
                      "--concurrency", "1,4", "--rounds", "2", "--warmup", "0", "--duration", "1", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("## Service variants side by side")
    assert f"checkout: `--intra-op-threads 2` from {root}" in out
    rows = table(out, "variant")
    assert [(r["variant"], r["concurrency"]) for r in rows] == [
        ("one thread", "1"), ("checkout", "1"), ("one thread", "4"), ("checkout", "4")]
    for r in rows:
        positive(r["req/s"])
        positive(r["p99 ms"])
        assert 0 < positive(r["event-loop CPU per request (ms)"]) < 50
        assert 0 < positive(r["other threads (cores)"]) <= len(os.sched_getaffinity(0)) + 0.1
        assert r["errors"] == "0"
    assert marker.exists()
    bad = run_script("bench/service_variants.py", "--variant", "x=@/nonexistent", timeout=30)
    assert bad.returncode == 2 and "holds no service/cli.py" in bad.stderr


def test_ood_cost_end_to_end(bench_repo):
    """bench/ood_cost.py: two variants of the test bundle (all outputs / logits only), a table row each."""
    bundle = bench_repo / RBN
    done = run_script("bench/ood_cost.py", "--variant", f"all={bundle}", "--variant", f"logits only={bundle}:logits",
                      "--batch", "1,4", "--rounds", "2", "--reps", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("## OOD outputs in ONNX Runtime") and "- Command: `" in out
    rows = table(out, "variant")
    assert [(r["variant"], r["batch"]) for r in rows] == [("all", "1"), ("logits only", "1"), ("all", "4"), ("logits only", "4")]
    assert rows[0]["outputs fetched"] == "logits, rbn_stats, rbn_channel_stats, ood_score"
    assert rows[0]["ratio to the first"] == "1.000" and rows[1]["outputs fetched"] == "logits"
    for row in rows:
        positive(row["ms per batch (median)"])


def test_photo_serving_end_to_end(bench_repo):
    """bench/photo_serving.py on the test bundle (any bundle's input spec takes a JPEG): one row per photo,
    the in-process limit and the service both measured, the ratio theirs."""
    done = run_script("bench/photo_serving.py", "--repository", str(bench_repo), "--model", RBN, "--rounds", "1",
                      "--seconds", "0.5", "--warmup", "1", "--duration", "2", "--batches", "1,4", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table(done.stdout, "photo")
    assert [r["photo"].split(" (")[0] for r in rows] == ["chelsea 451x300", "chelsea 12 MP"]
    for r in rows:
        limit, served = positive(r["in-process limit, img/s (best batch)"]), positive(r["service, req/s"])
        assert re.search(r"\(batch [14]\)", r["in-process limit, img/s (best batch)"])
        assert float(r["service / limit"].strip("*")) == pytest.approx(served / limit, abs=0.01)
