"""Discover and validate the bundles of a model repository; a bad bundle is reported, not fatal."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rbn.contract.bundle import BundleError, BundleMeta, discover, onnx_path, validate_bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundle:
    """A validated bundle folder and its metadata."""

    meta: BundleMeta
    path: Path

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def onnx_file(self) -> Path:
        return onnx_path(self.path, self.meta.version)


@dataclass(frozen=True)
class Scan:
    bundles: list[Bundle]
    errors: dict[str, str]  # bundle folder name -> one-line reason


def scan(repository: Path) -> Scan:
    """Validate every bundle in ``repository`` (schema, hash, Triton config; the graph is checked
    against the metadata when its session is created, so the serving path needs no ``onnx``)."""
    bundles: list[Bundle] = []
    errors: dict[str, str] = {}
    for folder in discover(Path(repository)):
        try:
            meta = validate_bundle(folder, check_graph=False)
        except BundleError as exc:
            errors[folder.name] = str(exc)
            log.error("skipping bundle %s: %s", folder.name, exc)
            continue
        bundles.append(Bundle(meta, folder))
    return Scan(bundles, errors)
