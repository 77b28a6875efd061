"""A server in a subprocess on an ephemeral loopback port: the port, one HTTP request, the process, and
``RbnServe``, the one way the tests and benchmarks start ``rbn-serve serve`` (settings as its flags).

Shared by the test helpers (tests/service, tests/web, tests/deploy, tests/reliability) and the benchmark
scripts (through bench/common.py); ``bounded_run`` runs a helper program (wrk: harness/wrk.py) to
completion. Standard library only, so that every script, the GPU one included, can import it; it imports
neither the service nor the tests.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    order, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        order.append(p)
        todo.extend(children.get(p, []))
    return order



def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS from /proc/<pid>/status), in bytes; OSError when it is gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(f"no VmRSS for pid {pid} (a zombie)")


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and every process under it (workers, decode processes), in bytes."""
    total = 0
    for p in process_tree(pid):
        try:
            total += rss_bytes(p)
        except OSError:  # gone meanwhile
            pass
    return total

def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 30.0) -> tuple[int, bytes]:
    """One request through the standard library: (status, body), error statuses included.

    Raises ``OSError`` (``urllib.error.URLError``, ``TimeoutError``, ...) when nothing answers.
    """
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ServerProcess:
    """``args`` in a subprocess serving on 127.0.0.1:``port``, stdout and stderr to ``log_path``.

    ``popen`` goes to ``subprocess.Popen`` as it is (``user=``, ``preexec_fn=``, ...). The class
    attributes are the defaults a subclass may change. As a context manager it is stopped on leaving
    (``with RbnServe(...).wait_ready() as server: yield server`` is a whole pytest fixture).
    """

    ready_timeout: float = 120.0  # seconds wait_ready waits for GET /readyz to answer 200
    poll_interval: float = 0.2  # seconds between two readiness checks
    stop_timeout: float = 20.0  # seconds stop waits after SIGTERM before SIGKILL
    quote_lines: int | None = 30  # how many of the log's last lines an error message quotes (None: all)

    def __init__(self, args: Sequence[str], port: int, log_path: Path, *, name: str = "server",
                 cwd: Path | None = None, env: dict | None = None, **popen) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_path)
        self.killed = False  # stop had to SIGKILL it
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the process's lifetime
        self.proc = subprocess.Popen(list(args), cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, **popen)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """All the process has written so far (also after it was stopped)."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int | None = 30) -> str:
        """The last ``lines`` lines of the log (None: all of it)."""
        text = self.log()
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> ServerProcess:
        """Poll ``ready()`` until it is true; ``RuntimeError`` if the process exits first, ``TimeoutError``
        after ``timeout`` seconds (both quoting the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.name} exited with code {code}:\n{self.log_tail(self.quote_lines)}")
            if ready():
                return self
            time.sleep(self.poll_interval)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail(self.quote_lines)}")

    def wait_ready(self, timeout: float | None = None) -> ServerProcess:
        """Wait until GET /readyz answers 200 (``ready_timeout`` seconds by default). On failure the
        process is stopped before the error is raised: callers write ``Server(...).wait_ready()`` and so
        hold no handle to stop a server that never came up (it would outlive the test run)."""
        try:
            return self.wait_until(self._readyz, timeout or self.ready_timeout)
        except (RuntimeError, TimeoutError):
            self.stop()
            raise

    def _readyz(self) -> bool:
        try:
            return http("GET", self.url + "/readyz", timeout=2)[0] == 200
        except OSError:
            return False

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, then the exit code; SIGKILL (and ``killed``) if it has not exited after ``timeout``
        seconds (``stop_timeout`` by default)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout or self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.killed = True
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


ROOT = Path(__file__).resolve().parents[1]


def die_with_parent() -> None:
    """A ``preexec_fn``: the child gets SIGKILL when the process that started it dies (Linux), so that a
    benchmark or test killed in the middle leaves no helper or server behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def bounded_run(args: Sequence[str], timeout: float, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a helper (wrk, ...) to completion, killed after ``timeout`` seconds or with us."""
    return subprocess.run(list(args), check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=die_with_parent)


def setting_flags(settings: dict[str, object]) -> list[str]:
    """``{"max_batch_size": 4, "access_log": True, "docs": False}`` -> ``["--max-batch-size", "4", "--access-log",
    "--no-docs"]`` (a boolean setting is a flag pair, ``--x`` / ``--no-x``, that takes no value); ``None`` passes
    no flag, so the server's own default applies."""
    flags: list[str] = []
    for key, value in settings.items():
        name = key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags += [f"--{name}", str(value)]
    return flags


def clean_env(root: Path = ROOT, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with no ``RBN_SERVE_*`` setting leaking in and the checkout ``root`` importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra or {})
    return env


class RbnServe(ServerProcess):
    """``python -m service serve`` from the checkout ``root`` on 127.0.0.1 (an ephemeral port unless one is
    given), on the CPU: every setting in ``settings`` passed as its command-line flag, then ``flags`` (so they win),
    and nothing from the caller's ``RBN_SERVE_*`` variables (``env`` adds variables of its own). No drain delay
    unless asked for (``drain_delay_s=None``: the server's default)."""

    def __init__(self, log_path: Path, *flags: str, port: int | None = None, root: Path = ROOT,
                 python: str = sys.executable, env: dict[str, str] | None = None, name: str = "rbn-serve",
                 popen: dict | None = None, **settings: object) -> None:
        port = port or free_port()
        # No drain delay unless a test asks for one: the 5 s default would add 5 s to every stop.
        settings = {"host": "127.0.0.1", "port": port, "providers": "cpu", "drain_delay_s": 0, **settings}
        args = [python, "-m", "service", "serve", *setting_flags(settings), *flags]  # the flags win
        super().__init__(args, port, log_path, name=name, cwd=root, env=clean_env(root, env), **(popen or {}))
