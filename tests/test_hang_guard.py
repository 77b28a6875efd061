"""No test can hang the suite: a deliberately hanging test fails within the per-test timeout, with its
traceback, and the run goes on; one stuck where the timeout's signal cannot reach it ends the run with
every thread's stack. pytest runs in a subprocess on a tiny generated test file, with this project's own
pytest configuration (pyproject.toml) and only the timeout shortened."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

HANGS = '''
import threading
import time

def test_before():
    assert True

def test_hangs_on_a_future_that_never_completes():
    threading.Event().wait()  # a batch that never runs: the request waits forever

def test_hangs_in_sleep():
    time.sleep(10_000)

def test_after():
    assert True
'''

SIGNAL_MASKED = '''
import signal
import time

def test_stuck_where_the_signal_cannot_reach():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # as a native library might
    time.sleep(10_000)

def test_never_reached():
    assert True
'''

GIL_HELD = '''
def test_stuck_in_c_code_holding_the_gil():
    sum(range(10**18))  # one C call: no signal handler and no other Python thread runs until it returns

def test_never_reached():
    assert True
'''


def run_pytest(tmp_path: Path, source: str, timeout_s: int, grace_s: int, budget_s: float) -> tuple[subprocess.CompletedProcess, float]:
    """pytest with the project's configuration (``-c pyproject.toml``) on one generated file."""
    (tmp_path / "test_generated.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("PYTEST_TIMEOUT", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "-p", "hang_guard", "-o", f"timeout={timeout_s}", "-o", f"hang_grace={grace_s}", "-rA",
         str(tmp_path / "test_generated.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=budget_s)
    return done, time.monotonic() - started


def test_the_suite_has_a_per_test_timeout_that_raises_in_the_test():
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 60 <= int(options["timeout"]) <= 600  # generous for 2 loaded cores, far below CI's 90 minutes
    assert options["timeout_method"] == "signal"  # a failure with a traceback, and the run goes on
    conftest = (TESTS / "conftest.py").read_text()
    assert '"hang_guard"' in conftest


def test_a_hanging_test_fails_within_the_timeout_with_its_traceback(tmp_path):
    done, took = run_pytest(tmp_path, HANGS, timeout_s=2, grace_s=60, budget_s=120)
    out = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "2 failed, 2 passed" in out, out  # the tests after the hanging ones still ran
    assert "Failed: Timeout (>2.0s) from pytest-timeout" in out, out
    assert "threading.Event().wait()" in out and "time.sleep(10_000)" in out, out  # where each one hung
    assert took < 60, f"two 2 s timeouts took {took:.0f} s"


def test_a_test_the_signal_cannot_reach_ends_the_run_with_every_stack(tmp_path):
    done, took = run_pytest(tmp_path, SIGNAL_MASKED, timeout_s=1, grace_s=2, budget_s=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "+ Timeout +" in out and "Stack of MainThread" in out, out  # pytest-timeout's thread report
    assert "time.sleep(10_000)" in out, out  # where it is stuck
    assert "test_never_reached" not in out, out  # the run ended there
    assert took < 60, f"the run took {took:.0f} s to end"


def test_a_test_holding_the_gil_ends_the_run_with_a_c_level_dump(tmp_path):
    done, took = run_pytest(tmp_path, GIL_HELD, timeout_s=1, grace_s=2, budget_s=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Timeout" in out and "in test_stuck_in_c_code_holding_the_gil" in out, out  # faulthandler's dump
    assert "test_never_reached" not in out, out
    assert took < 60, f"the run took {took:.0f} s to end"
