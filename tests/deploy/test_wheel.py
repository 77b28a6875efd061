"""The wheel and sdist as a user gets them: `python -m build`, `twine check`, `pip install rbn_serve-*.whl`
into an empty virtual environment, then `rbn-serve serve` from a folder that is not a checkout answers a
/predict with a shipped sample, serving the bundles the wheel carries as package data.

The build runs on a copy of the sources (so nothing is written into the checkout) with build isolation, so
the `[build-system]` pins are what is exercised. Installing fetches the serving dependencies from the
package index, like `./run.sh serve`; each step has a time limit.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from deploy_support import ROOT, Server, free_port, http, sample_images

# longer than the suite's per-test timeout: the first test builds the wheel (up to 300 s) and installs it
# into a fresh venv (up to 600 s)
pytestmark = pytest.mark.timeout(1200)

BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "rbn", "service", "models", "samples")
PACKAGES = ("rbn", "service")  # the code packages; every module in them must be in the wheel
MODELS_PACKAGE = "rbn_serve_models"
SAMPLES_PACKAGE = "rbn_serve_samples"


def step(args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    command = " ".join(map(str, args))
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def project() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """sdist and wheel built from a copy of the sources; the wheel is built from the sdist (build's default)."""
    work = tmp_path_factory.mktemp("build")
    src = work / "src"
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(source, src / name)
    out = work / "dist"
    done = step([sys.executable, "-m", "build", "--outdir", str(out), str(src)], timeout=300)
    # setuptools announces removals with SetuptoolsDeprecationWarning (the old license table did).
    assert "DeprecationWarning" not in done.stdout + done.stderr, done.stdout + done.stderr
    # a data folder with an importable name that is not listed as a package (`Package would be ignored`)
    assert "absent from the `packages` configuration" not in done.stdout + done.stderr, done.stdout + done.stderr
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0], "src": src}


def test_twine_check_passes(dist):
    done = step([sys.executable, "-m", "twine", "check", "--strict", str(dist["wheel"]), str(dist["sdist"])],
                timeout=120)
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_wheel_metadata_license_version_and_extras(dist):
    with zipfile.ZipFile(dist["wheel"]) as whl:
        meta_name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(whl.read(meta_name))
        licenses = [n for n in whl.namelist() if ".dist-info/licenses/" in n]
    assert meta["Version"] == project()["version"]
    assert meta["License-Expression"] == "MIT" and meta["License"] is None
    assert [Path(n).name for n in licenses] == ["LICENSE"]
    requires = meta.get_all("Requires-Dist")
    torch = [r for r in requires if r.startswith("torch")]
    assert torch and all('extra == "train"' in r for r in torch), torch  # torch only with [train]


def test_wheel_holds_every_module_and_every_shipped_bundle_file(dist):
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
        for package in PACKAGES:
            modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")
                       if "__pycache__" not in p.parts}
            missing = sorted(modules - names)
            assert modules and not missing, f"missing from the wheel: {missing} (list the package in pyproject.toml)"
        # The bundles as they are in the copy that was built (models/ may change while a test session runs).
        models = dist["src"] / "models"
        files = [p for p in models.rglob("*") if p.is_file()]
        assert any(p.name == "model.json" for p in files), "no bundle in models/"
        for path in files:
            packaged = f"{MODELS_PACKAGE}/{path.relative_to(models).as_posix()}"
            assert packaged in names, f"{packaged} is not in the wheel"
            assert whl.read(packaged) == path.read_bytes(), packaged
        # The page's static files (package data of service.http.web) and the samples it offers.
        data = [(p, p.relative_to(dist["src"]).as_posix()) for p in (dist["src"] / "service" / "http" / "web" / "static").iterdir()]
        data += [(p, f"{SAMPLES_PACKAGE}/{p.relative_to(dist['src'] / 'samples').as_posix()}")
                 for p in (dist["src"] / "samples").rglob("*") if p.is_file()]
        assert len(data) > 10
        for path, packaged in data:
            assert packaged in names and whl.read(packaged) == path.read_bytes(), f"{packaged} is not in the wheel"


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Path:
    """A fresh virtual environment (no system site-packages) with only the wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    step([sys.executable, "-m", "venv", str(venv)], timeout=120)
    step([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(dist["wheel"])], timeout=600)
    return venv


def clean_env(venv: Path) -> dict[str, str]:
    """Only what a user's shell would have: no PYTHONPATH, no RBN_SERVE_* from the test session."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RBN_SERVE_")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return env


def test_installed_wheel_serves_the_shipped_models_from_another_folder(installed, dist, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # holds no models/ and no checkout
    elsewhere.mkdir()
    port = free_port()
    version = project()["version"]
    server = Server([str(installed / "bin" / "rbn-serve"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                    clean_env(installed), port, tmp_path / "server.log", cwd=elsewhere)
    try:
        server.wait_ready()
        name, png, label = sample_images(1)[0]
        status, body = http("POST", server.url + "/predict", png, {"Content-Type": "image/png"})
        assert status == 200, body
        answer = json.loads(body)
        assert answer["model"]["name"] == "fmnist-resnet20-rbn"
        assert answer["predictions"][0]["index"] == label, (name, answer)
        status, body = http("GET", server.url + "/models")
        models = json.loads(body)
        shipped = sorted(p.parent.name for p in (dist["src"] / "models").glob("*/model.json"))
        assert sorted(m["name"] for m in models["models"]) == shipped and models["server_version"] == version
        assert json.loads(http("GET", server.url + "/v2")[1])["version"] == version
        # the page, a sample it offers and the offline API docs' assets, from the installed package data
        status, body = http("GET", server.url + "/")
        assert status == 200 and b"/static/app.js" in body, body[:200]
        for path in ("/static/app.js", "/samples/fashion-mnist/labels.json", "/docs-assets/swagger-ui-bundle.js"):
            assert http("GET", server.url + path)[0] == 200, path
    finally:
        code = server.stop(timeout=40)
    assert code == 0, server.log_tail(40)
    assert list(elsewhere.iterdir()) == [], "the server wrote into its working directory"


def test_installed_wheel_writes_out_its_bundles_and_imports_rbn_without_torch(installed, dist, tmp_path):
    env = clean_env(installed)
    step([str(installed / "bin" / "rbn-serve"), "models", str(tmp_path / "out")], timeout=60, cwd=tmp_path, env=env)
    models = dist["src"] / "models"
    for path in (p for p in models.rglob("*") if p.is_file()):
        assert (tmp_path / "out" / path.relative_to(models)).read_bytes() == path.read_bytes(), path
    step([str(installed / "bin" / "rbn-serve"), "validate", *map(str, sorted((tmp_path / "out").iterdir()))],
         timeout=120, cwd=tmp_path, env=env)
    probe = ("import importlib.util, sys, rbn, rbn.contract.bundle, rbn.contract.corruptions; "
             "assert importlib.util.find_spec('torch') is None; assert 'torch' not in sys.modules")
    step([str(installed / "bin" / "python"), "-c", probe], timeout=60, cwd=tmp_path, env=env)
