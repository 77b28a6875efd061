"""Which skips a CI run tolerates: the allow-list, and the pytest plugin that turns every other skip
into a failure when the environment says ``CI=true``.

A test that cannot run here because something `./run.sh test` installs is missing must fail, not
skip: otherwise removing an install step leaves CI green. The only skips allowed are for facts about
the machine that no install step changes. A test takes one with ``allowed_skip(key, detail)``;
anything else that skips (``pytest.skip``, ``importorskip``, a ``skipif`` marker) fails under CI.

Loaded by tests/conftest.py (``pytest_plugins``); ``pytest -p skip_policy`` with ``tests/`` on the
path loads it for any other test tree (tests/test_skip_policy.py does that).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

# key -> why a run on a correctly installed machine may still skip for it.
ALLOWED: dict[str, str] = {
    "cuda-present": "a test of the CPU-only failure path needs a machine without CUDA; a GPU machine cannot run it",
    "cuda-absent": "a CUDA-only check needs a GPU; CI machines usually have none, and no install step adds one",
    "index-unreachable": "the package index is down or firewalled; the lock check needs it and cannot fake it",
}

CI_VALUES = {"true", "1", "yes"}


def enforced(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """True under CI (``CI=true``, as GitHub Actions, GitLab and .ci/run set it)."""
    return environ.get("CI", "").strip().lower() in CI_VALUES


def allowed_skip(key: str, detail: str) -> NoReturn:
    """Skip for a reason on the allow-list (KeyError for any other key: add it to ALLOWED, with why)."""
    if key not in ALLOWED:
        raise KeyError(f"{key!r} is not on the skip allow-list in tests/skip_policy.py")
    pytest.skip(f"[{key}] {detail}")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The message a skip carries (``longrepr`` is (path, line, "Skipped: ...") for skips)."""
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return message.removeprefix("Skipped: ")


def disallowed(report: pytest.TestReport | pytest.CollectReport) -> bool:
    """A skip (not an xfail) whose reason does not name an allow-listed key."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return False
    return not any(skip_reason(report).startswith(f"[{key}] ") for key in ALLOWED)


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, which is a failure unless the reason is on the allow-list in "
                       f"tests/skip_policy.py ({', '.join(ALLOWED)}):\n  {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if enforced() and disallowed(report):
        _fail(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield  # a module-level importorskip / pytest.skip(allow_module_level=True)
    if enforced() and disallowed(report):
        _fail(report)
    return report


def pytest_report_header(config: pytest.Config) -> str:
    state = "on (CI=true): disallowed skips fail" if enforced() else "off (CI is not true)"
    return f"skip policy: {state}; allowed: {', '.join(ALLOWED)}"
