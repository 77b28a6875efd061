"""Helpers for the page and browser tests: a real server process on the shipped bundles, and the URLs a
page refers to."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from tests.procs import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
SAMPLES = ROOT / "samples"
STATIC = ROOT / "service" / "web" / "static"


class PageServer(ServerProcess):
    """``python -m service serve`` on the shipped bundles, on an ephemeral loopback port."""

    ready_timeout = 120.0
    poll_interval = 0.1
    quote_lines = None

    def __init__(self, log_path: Path, **settings: object) -> None:
        port = free_port()
        args = [sys.executable, "-m", "service", "serve", "--model-repository", str(MODELS),
                "--host", "127.0.0.1", "--port", str(port), "--providers", "cpu"]
        for key, value in settings.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")}
        env["PYTHONPATH"] = str(ROOT)
        super().__init__(args, port, log_path, cwd=ROOT, env=env)


_REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""")


def references(html: str) -> list[str]:
    """Every URL an HTML page names in src=, href=, spec-url= or a script's ``url: '...'``."""
    return [a or b for a, b in _REFERENCE.findall(html)]


def is_local(url: str, origin: str) -> bool:
    """A URL of the page's own origin (absolute, or relative to it), or an inline data:/blob: URL."""
    if url.startswith(("data:", "blob:", origin + "/")) or url == origin:
        return True
    return url.startswith("/") and not url.startswith("//")
