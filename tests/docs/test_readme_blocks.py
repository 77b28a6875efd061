"""Every shell and Python block of README.md and of the docs' quick-starts runs as written, against a server
started as the README says (`./run.sh serve`), so a documented command cannot fail for a newcomer again.

- Shell blocks (```bash, ```sh) run with bash -eu from the repository root, with a PATH that does
  not hold .venv/bin (a newcomer's shell after `./run.sh serve`: `rbn-serve` alone is "command not found").
- Python blocks (```python) run with the project's interpreter (`.venv/bin/python`, which the block's text
  tells the reader to use).
- The server listens on a free port instead of 8000, and serves gRPC on another instead of 8001 (tests run
  side by side): `127.0.0.1:8000` / `:8001` and `localhost:...` in a block are rewritten to them; nothing
  else is changed.
- A block is left out only when the line before it is `<!-- no-run: <reason> -->`, the reason being one of
  NO_RUN_REASONS (a GPU, Docker, a long training run, the whole test suite, the server itself).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.procs import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
# README.md and the docs whose blocks a newcomer runs first (each doc's examples are its quick-start).
DOCUMENTS = ("README.md", "docs/install.md", "docs/api.md", "docs/workbench.md", "docs/ood.md", "docs/metrics.md",
             "docs/configuration.md", "docs/library.md", "docs/deployment.md")
NO_RUN_REASONS = ("needs a GPU", "needs Docker", "needs Docker and a GPU", "long training run",
                  "runs the whole test suite", "starts the server", "needs a fresh machine",
                  "builds the ImageNet pair (tests/rbn/experiments/test_imagenet_pair.py runs it)")
BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
NO_RUN = re.compile(r"<!--\s*no-run:\s*(.*?)\s*-->\s*$")
RUN_LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python"}
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    kind: str  # shell | python
    text: str
    no_run: str | None

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"


def blocks(document: str) -> list[Block]:
    text = (ROOT / document).read_text()
    found = []
    for match in BLOCK.finditer(text):
        kind = RUN_LANGUAGES.get(match.group(1))
        if kind is None:
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NO_RUN.search(before)
        found.append(Block(document, text.count("\n", 0, match.start()) + 1, kind, match.group(2),
                           marker.group(1) if marker else None))
    return found


ALL = [b for d in DOCUMENTS if (ROOT / d).exists() for b in blocks(d)]
RUN = [b for b in ALL if b.no_run is None]


def test_the_documents_exist_and_have_blocks_to_run():
    missing = [d for d in DOCUMENTS if not (ROOT / d).exists()]
    assert not missing, missing
    assert len(RUN) >= 15, [b.id for b in RUN]
    readme = [b for b in RUN if b.document == "README.md"]
    assert len(readme) >= 3, "README's Try it must be runnable"


def test_every_skipped_block_says_why_with_a_known_reason():
    odd = [(b.id, b.no_run) for b in ALL if b.no_run is not None and b.no_run not in NO_RUN_REASONS]
    assert not odd, f"no-run reasons must be one of {NO_RUN_REASONS}: {odd}"


def test_readme_is_a_map_of_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", (ROOT / "README.md").read_text()):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def newcomer_env(port: int) -> dict[str, str]:
    """The caller's environment without RBN_SERVE_* and without .venv/bin on PATH."""
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RBN_SERVE_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if p and Path(p).resolve() != Path(venv_bin).resolve())
    env["RBN_TEST_PORT"] = str(port)
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`./run.sh serve` as the README says, on a free port (run.sh installs nothing when the venv is current)."""
    port = free_port()
    grpc_port = free_port()
    proc = ServerProcess(["./run.sh", "serve", "--port", str(port), "--grpc-port", str(grpc_port)], port,
                         tmp_path_factory.mktemp("readme") / "server.log", name="./run.sh serve",
                         cwd=ROOT, env=newcomer_env(port))
    proc.ready_timeout = 300.0
    proc.wait_ready()
    proc.grpc_port = grpc_port
    yield proc
    proc.stop()


def on_port(text: str, port: int, grpc_port: int) -> str:
    text = re.sub(r"(127\.0\.0\.1|localhost):8000\b", rf"\g<1>:{port}", text)
    return re.sub(r"(127\.0\.0\.1|localhost):8001\b", rf"\g<1>:{grpc_port}", text)


@pytest.mark.timeout(BLOCK_TIMEOUT_S + 120)
@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs_as_written(block: Block, server, tmp_path):
    text = on_port(block.text, server.port, server.grpc_port)
    if block.kind == "shell":
        args = ["bash", "-eu", "-c", text]  # no pipefail: `... | head` is fine in a reader's shell
    else:
        args = [sys.executable, "-c", text]
    done = subprocess.run(args, cwd=ROOT, env=newcomer_env(server.port), capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)
    assert done.returncode == 0, (f"{block.id} exited {done.returncode}\n--- block ---\n{block.text}\n"
                                  f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}")
    assert "command not found" not in done.stderr, done.stderr
