"""With --workers, the live gauges are published by each worker every LIVE_REFRESH_S; a readiness change is
published at once, so a scrape right after /readyz turned 200 does not read rbn_serve_ready 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_a_readiness_change_is_published_at_once(tmp_path):
    code = f"""
from pathlib import Path
from service.core import metrics as m
m.LIVE_REFRESH_S = 3600.0  # no periodic tick during this test: only live_changed() can publish
m.share_between_processes(Path({str(tmp_path)!r}))
metrics = m.Metrics(Path({str(tmp_path)!r}))
state = {{"ready": False}}
metrics.register_live(lambda: m.LiveState(state["ready"], 0, {{}}))
def ready_value():
    line = next(l for l in metrics.expose().decode().splitlines() if l.startswith("rbn_serve_ready"))
    return float(line.split()[-1])
assert ready_value() == 0.0
state["ready"] = True
assert ready_value() == 0.0, "published without being told"  # the tick is an hour away
metrics.live_changed()
assert ready_value() == 1.0
state["ready"] = False  # draining
metrics.live_changed()
assert ready_value() == 0.0
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_one_process_reads_the_gauges_at_scrape_time_and_live_changed_is_harmless():
    from service.core.metrics import LiveState, Metrics

    metrics = Metrics()
    state = {"ready": False}
    metrics.register_live(lambda: LiveState(state["ready"], 0, {}))
    state["ready"] = True
    metrics.live_changed()  # nothing to publish in one process
    assert "rbn_serve_ready 1.0" in metrics.expose().decode()
