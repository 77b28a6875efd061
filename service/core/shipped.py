"""The model bundles shipped inside the package, and the version of the installed package.

The wheel maps the repository's ``models/`` folder to the data package ``rbn_serve_models``
(pyproject.toml ``[tool.setuptools.package-dir]``), so ``pip install rbn_serve-*.whl`` alone can
serve the shipped pair from any folder; an editable install points the same name at ``models/``.
"""

from __future__ import annotations

import importlib.util
import shutil
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "rbn-serve"
MODELS_PACKAGE = "rbn_serve_models"
LOCAL_REPOSITORY = Path("models")


def package_version() -> str:
    """The installed distribution's version (pyproject ``version``); 0.0.0 when run from a bare checkout."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0.0.0"


def shipped_models() -> Path | None:
    """The folder of the bundles shipped with the package, or None when the package holds none."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    # A data package without __init__.py is a namespace package: take the first folder that holds bundles.
    for location in spec.submodule_search_locations:
        folder = Path(location)
        if any(folder.glob("*/model.json")):
            return folder
    return None


def default_model_repository() -> Path:
    """``./models`` when there is one (a checkout, or a mounted repository), else the shipped bundles."""
    if LOCAL_REPOSITORY.is_dir():
        return LOCAL_REPOSITORY
    return shipped_models() or LOCAL_REPOSITORY


def write_shipped_models(target: Path) -> list[str]:
    """Copy the shipped bundles into ``target`` (created; existing bundles of the same name are an error).

    Returns the bundle names written. For serving them with another server (Triton, KServe) or editing them.
    """
    source = shipped_models()
    if source is None:
        raise FileNotFoundError(f"this installation ships no model bundles (no {MODELS_PACKAGE} package data)")
    names = sorted(p.parent.name for p in source.glob("*/model.json"))
    clashes = [n for n in names if (target / n).exists()]
    if clashes:
        raise FileExistsError(f"{target} already holds {', '.join(clashes)}; choose an empty folder")
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    return names
