"""The serving path never imports torch (nor onnx): the app is built, loaded and warmed up in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

from tests.service.svc_support import ROOT

SCRIPT = """
import asyncio, sys
from service.http.app import create_app
from service.cli import main  # noqa: F401
from service.core.config import Settings

async def run():
    app = create_app(Settings(model_repository=sys.argv[1], providers="cpu", max_batch_size=2))
    async with app.router.lifespan_context(app):
        await app.state.service.wait_loaded()
        assert app.state.service.ready, app.state.service.fatal

asyncio.run(run())
print(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "onnx", "torchvision"}))
"""


def test_service_never_imports_torch(bundle_repo):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle_repo)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


HELPERS = """
import importlib, pathlib, sys
sys.path[:0] = ["tests/service", "tests", "."]
for path in sorted(pathlib.Path("tests/service").glob("*.py")):  # every test module, fixture and helper
    importlib.import_module(path.stem)
# no service test needs bench/: the server processes come from harness/procs.py
print(sorted({m for m in sys.modules if m.split(".")[0] in ("torch", "bench")}))
"""


def test_the_service_tests_import_neither_torch_nor_bench():
    """Every module under tests/service imported in a fresh interpreter: their bundles come from models/
    (tests/shipped_bundles.py), their server processes from harness/procs.py."""
    result = subprocess.run([sys.executable, "-c", HELPERS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
