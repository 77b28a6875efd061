"""Canaries for the few places where rbn-serve relies on a library's undocumented attributes: each test
fails, naming the hook, when an upgrade changes it, instead of the feature silently breaking.

Hooks held here: FastAPI's included-router records (``original_router``, ``include_context``), which the
raw-image fast path reads to prove /predict has no dependency it would skip; prometheus_client's
``values.ValueClass`` / ``MultiProcessValue``, which ``--workers`` swaps to share values between processes.
(The HTTP server's hooks, if any, have their canaries beside the reliability tests.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi import Depends, FastAPI

from service.core.config import Settings
from service.http import fastpath
from service.http.routes import predict

ROOT = Path(__file__).resolve().parents[1]


def test_fastapi_records_which_router_an_include_came_from(tmp_path):
    """fastpath._dependencies finds dependencies added at include time only through these records."""
    from service.http.app import create_app

    app = create_app(Settings(model_repository=tmp_path, providers="cpu"))
    included = [r for r in app.router.routes if getattr(r, "original_router", None) is predict.router]
    assert included, "FastAPI no longer records original_router on included routes: fastpath._dependencies is blind"
    assert all(hasattr(r, "include_context") for r in included), "FastAPI renamed include_context"


def test_the_fast_path_refuses_to_skip_a_dependency_added_at_include_time():
    """The behaviour the hook serves: a dependency on the include makes the fast path refuse to start."""

    async def needs_something() -> None:
        return None

    app = FastAPI()
    app.include_router(predict.router, dependencies=[Depends(needs_something)])
    found = fastpath._dependencies(app.router, next(r for r in predict.router.routes if r.path == fastpath.PATH))
    assert found, "a dependency given to include_router is invisible to the fast path's check"


def test_prometheus_client_multiprocess_value_class_can_be_swapped(tmp_path):
    """metrics.share_between_processes replaces values.ValueClass; a counter created after it must write
    its value into the shared folder (a fresh interpreter, as a worker is)."""
    code = f"""
import sys
from pathlib import Path
from prometheus_client import values
assert hasattr(values, "ValueClass") and callable(getattr(values, "MultiProcessValue", None)), "hook renamed"
from service.core.metrics import share_between_processes
share_between_processes(Path({str(tmp_path)!r}))
from prometheus_client import CollectorRegistry, Counter
Counter("canary", "c", registry=CollectorRegistry()).inc(3)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.glob("counter_*.db")), "prometheus_client wrote no multiprocess file: the swap did nothing"
