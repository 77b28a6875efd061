"""The layers: each folder imports only the ones below it (core never imports a web framework or the
front ends; the rbn contract never imports torch). Read from the source, so a lazy import counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder -> module prefixes nothing under it may import
FORBIDDEN = {
    "rbn/contract": ("torch", "torchvision", "timm", "rbn.library", "rbn.experiments", "rbn.cli", "service"),
    "rbn/library": ("rbn.experiments", "rbn.cli", "service"),
    "rbn/experiments": ("rbn.cli", "service"),
    "service/core": ("fastapi", "starlette", "uvicorn", "httptools", "grpc", "torch", "service.http",
                     "service.grpc", "service.tools", "service.cli", "rbn.library", "rbn.experiments"),
    "service/http": ("torch", "service.grpc", "service.tools", "service.cli", "rbn.library", "rbn.experiments"),
    "service/grpc": ("torch", "fastapi", "starlette", "uvicorn", "service.http", "service.tools", "service.cli",
                     "rbn.library", "rbn.experiments"),
    "service/tools": ("torch", "service.http", "service.grpc", "rbn.library", "rbn.experiments"),
    "harness": ("tests", "bench", "service", "rbn"),
    "bench": ("tests",),
    # the tests never import bench (tests/bench and tests/deploy's GPU-stage test test bench's own scripts)
    **{f"tests/{room}": ("bench",) for room in ("service", "rbn", "grpc", "web", "reliability", "docs")},
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file names in an import statement, at any depth (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    return bad


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_import_runs_up_a_layer(folder):
    assert (ROOT / folder).is_dir(), f"{folder} is gone: update FORBIDDEN"
    assert violations(folder, FORBIDDEN[folder]) == []


def test_the_check_sees_a_violation(tmp_path):
    """The checker itself: a lazy import of torch inside a function is found."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    import torch.nn as nn\n    from fastapi import FastAPI\n")
    assert {"torch.nn", "fastapi", "fastapi.FastAPI"} <= imported_modules(path)
