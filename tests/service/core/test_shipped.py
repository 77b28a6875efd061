"""The bundles shipped with the package: the default repository, and `rbn-serve models DIR`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tests.service.svc_support import ROOT

from service.core.shipped import default_model_repository, shipped_models, write_shipped_models


def bundle_files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_installed_package_ships_the_repository_models():
    shipped = shipped_models()
    assert shipped is not None
    assert bundle_files(shipped) == bundle_files(ROOT / "models")


def test_default_repository_is_local_models_else_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_model_repository() == shipped_models()
    (tmp_path / "models").mkdir()
    assert str(default_model_repository()) == "models"


def test_write_shipped_models_copies_every_file_and_refuses_to_overwrite(tmp_path):
    names = write_shipped_models(tmp_path / "out")
    assert names == sorted(p.parent.name for p in (ROOT / "models").glob("*/model.json"))
    assert bundle_files(tmp_path / "out") == bundle_files(ROOT / "models")
    with pytest.raises(FileExistsError, match=names[0]):
        write_shipped_models(tmp_path / "out")


def test_models_command(tmp_path):
    def models(target) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service", "models", str(target)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    done = models(tmp_path / "repo")
    assert done.returncode == 0 and done.stdout.startswith("wrote "), done.stderr
    again = models(tmp_path / "repo")
    assert again.returncode == 1 and "choose an empty folder" in again.stderr
