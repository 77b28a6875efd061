"""bench/peers: the request framings, the BENCHMARKS.md section writer, and the harness end to end with
rbn-serve and BentoML (the lightest peer install) on a tiny setting.

The end-to-end test creates BentoML's venv (``.peers/bentoml``, pip from the package index) when it is
missing; that install is not part of the time bound. It never asserts a speed: only that every row is
there, every server answered correctly (the harness checks each answer against the service's pipeline),
with no errors and finite positive figures.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bench.peers import framing, venvs
from bench.peers.run import BEGIN, END, write_section
from skip_policy import allowed_skip
from tests.bench.test_bench_harness import positive, table

ROOT = Path(__file__).resolve().parents[2]
PNG = (ROOT / "samples" / "fashion-mnist" / "0_ankle-boot.png").read_bytes()


def test_raw_and_multipart_framing():
    raw = framing.frame("raw", PNG)
    assert raw.body == PNG and raw.headers == {"Content-Type": "image/png"}
    multipart = framing.frame("multipart", PNG, field="images")
    boundary = framing.BOUNDARY
    assert multipart.headers == {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert multipart.body == (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="image.png"\r\n'
                              f"Content-Type: image/png\r\n\r\n").encode() + PNG + f"\r\n--{boundary}--\r\n".encode()


def test_oip_binary_framing():
    request = framing.frame("oip", PNG)
    length = int(request.headers["Inference-Header-Content-Length"])
    header = json.loads(request.body[:length])
    assert header["inputs"] == [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                 "parameters": {"binary_data_size": 4 + len(PNG)}}]
    assert request.body[length:] == struct.pack("<I", len(PNG)) + PNG
    answer = {"model": {"name": "m", "version": 1}, "predictions": [{"label": "Bag"}]}
    body = json.dumps({"outputs": [{"name": "answer", "datatype": "BYTES", "shape": [1, 1],
                                    "data": [json.dumps(answer)]}]}).encode()
    assert framing.first_prediction("oip", body) == {"label": "Bag"}


def test_b64json_framing():
    request = framing.frame("b64json", PNG)
    assert json.loads(request.body) == {"instances": [{"image": {"b64": base64.b64encode(PNG).decode()}}]}
    assert framing.first_prediction("b64json", b'{"predictions": [{"label": "Bag"}]}') == {"label": "Bag"}


def test_same_answer():
    want = {"label": "Bag", "index": 8, "probability": 0.9, "ood": {"score": 1.0},
            "top_k": [{"index": 8, "probability": 0.9}, {"index": 1, "probability": 0.1}]}
    assert framing.same_answer(json.loads(json.dumps(want)), want) is None
    assert framing.same_answer({**want, "ood": {"score": 1.001}}, want) == "value 1.001 instead of 1.0"
    assert framing.same_answer({**want, "index": 7}, want).startswith("label ")


def test_write_section_replaces_only_its_block(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nabove\n")
    write_section(md, "## Peers\nfirst\n")
    assert md.read_text() == f"# Benchmarks\n\nabove\n\n{BEGIN}\n## Peers\nfirst\n{END}\n"
    md.write_text(md.read_text() + "\n## Later section\n")
    write_section(md, "## Peers\nsecond\n")
    assert md.read_text() == f"# Benchmarks\n\nabove\n\n{BEGIN}\n## Peers\nsecond\n{END}\n\n## Later section\n"


def index_reachable() -> bool:
    done = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "bentoml"], capture_output=True,
                          text=True, timeout=120, check=False)
    return done.returncode == 0


@pytest.mark.timeout(1200)  # may create the peers' virtual environments (pip installs) before a 240 s run
def test_peers_harness_end_to_end(tmp_path):
    try:
        venvs.ensure("bentoml", ROOT / ".peers", log=lambda m: print(m, file=sys.stderr))
    except subprocess.CalledProcessError as exc:
        if not index_reachable():
            allowed_skip("index-unreachable", f"installing BentoML's venv failed and pip cannot reach the index: {exc}")
        raise
    out, md = tmp_path / "peers.md", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")}
    done = subprocess.run(
        [sys.executable, "bench/peers/run.py", "--peers", "rbn-serve,bentoml", "--concurrency", "1,4", "--rounds", "1",
         "--warmup", "1", "--duration", "1", "--tune-concurrency", "4", "--tune-warmup", "0", "--tune-duration", "1",
         "--max-settings", "2", "--out", str(out), "--benchmarks", str(md)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    assert out.read_text() == text
    assert md.read_text() == f"# Benchmarks\n\n{BEGIN}\n{text.rstrip()}\n{END}\n"
    assert text.startswith("## Peers: rbn-serve vs BentoML")
    assert "- Peer versions (their venvs, bench/peers/requirements-*.txt): bentoml: bentoml 1.4.40, onnxruntime 1.31.1" in text
    rows = table(text, "server (best setting)")
    assert [(r["server (best setting)"].split(" (")[0], r["concurrency"]) for r in rows] == [
        ("rbn-serve", "1"), ("rbn-serve", "4"), ("bentoml", "1"), ("bentoml", "4")]
    for row in rows:
        assert row["errors"] == "0"
        for column in ("req/s", "p50 ms", "p99 ms", "RSS MB (tree)", "PSS MB", "CPU ms / request"):
            positive(row[column])
    for row in rows[2:]:
        positive(row["rbn-serve / peer: req/s"])
        positive(row["rbn-serve / peer: p50"])
    tuning = table(text, "peer")
    assert [(r["peer"], r["setting"]) for r in tuning] == [
        ("rbn-serve", "defaults"), ("rbn-serve", "2 workers"),  # --workers 2 runs through the harness too
        ("bentoml", "1 worker, batch 32, 1 s SLO"), ("bentoml", "1 worker, batch 64, 60 s SLO")]
    for row in tuning:
        positive(row["req/s at 4"])
        assert row["errors"] == "0"
    assert "- **bentoml** (venv `.peers/bentoml`" in text
    cpu = table(text, "server")  # where the CPU goes
    assert {r["server"] for r in cpu} == {"rbn-serve", "bentoml"}
    for row in cpu:
        positive(row["CPU ms / request"])
