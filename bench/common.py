"""Shared pieces of the benchmark scripts: the machine and versions block, the command line,
server subprocesses that cannot outlive the benchmark (on harness/procs.py), and pausing a background job.

Standard library only (plus numpy), so every script, the GPU one included, can import it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness import procs
from harness.procs import bounded_run, die_with_parent  # noqa: F401 - bounded_run: bench's scripts import it from here
from harness.procs import free_port  # noqa: F401 - the scripts import it from here
from harness.procs import process_tree

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PNG = ROOT / "samples" / "fashion-mnist" / "0_ankle-boot.png"


# --- what ran where ---------------------------------------------------------------------------
def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_line() -> str:
    mem = memory_gib()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu_model()}, {usable_cpus()} usable of {os.cpu_count()} CPUs"
            + (f", {mem:.0f} GiB RAM" if mem else "")
            + f", Linux {platform.release()} ({platform.machine()}); load average at start {load}")


def versions_line(packages: Iterable[str] = ("onnxruntime", "numpy")) -> str:
    parts = [f"Python {platform.python_version()}"] + [f"{p} {version(p)}" for p in packages]
    return ", ".join(parts)


def command_line() -> str:
    """The command as it was run (interpreter path relative to the repository where it can be)."""
    exe = Path(sys.executable)
    try:
        exe_text = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)
    except ValueError:
        exe_text = str(exe)
    argv = list(sys.argv)
    script = Path(argv[0]).resolve() if argv and argv[0] and argv[0] != "-c" else None
    if script is not None and script.is_file() and script.is_relative_to(ROOT):
        argv[0] = str(script.relative_to(ROOT))
    return " ".join(shlex.quote(a) for a in [exe_text, *argv])


def header(title: str, packages: Iterable[str] = ("onnxruntime", "numpy"), extra: Sequence[str] = ()) -> list[str]:
    lines = [f"## {title}", "", f"- Machine: {machine_line()}", f"- Versions: {versions_line(packages)}"]
    lines += [f"- {e}" for e in extra]
    lines += [f"- Command: `{command_line()}`", ""]
    return lines


def emit(lines: list[str], out: str | None) -> str:
    """Print the Markdown section and, with ``out``, also write it to that file."""
    text = "\n".join(lines).rstrip() + "\n"
    sys.stdout.write(text)
    sys.stdout.flush()
    if out:
        Path(out).write_text(text)
    return text


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks (servers, paused jobs) run."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def parse_ints(text: str, what: str = "expected positive integers") -> list[int]:
    """An argparse ``type``: comma-separated positive integers ("1,4,16")."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{what}: {text!r}")
    return values


@dataclass(frozen=True)
class Point:
    """One timed configuration: images per second and per-call latency."""

    batch: int
    runs: int
    images_per_s: float
    p50_ms: float
    p95_ms: float


def time_calls(call: Callable[[], object], batch: int, seconds: float, min_runs: int = 5, warmup: int = 3) -> Point:
    """Call ``call()`` (one batch of ``batch`` images, finished when it returns) back to back for at
    least ``seconds`` and ``min_runs`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    p95 = float(np.percentile(times, 95))
    return Point(batch, len(times), batch * len(times) / sum(times), statistics.median(times) * 1e3, p95 * 1e3)


def percentiles_ms(latencies_s: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float]:
    if len(latencies_s) == 0:
        return [float("nan")] * len(qs)
    return [float(v) * 1e3 for v in np.percentile(np.asarray(latencies_s, dtype=np.float64), qs)]


# --- subprocesses ----------------------------------------------------------------------------
def http(method: str, url: str, body: bytes | None = None, content_type: str | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:
    """One request through the standard library; (status, body); status 0 when nothing answers."""
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        return procs.http(method, url, body, headers, timeout)
    except OSError:  # URLError, ConnectionError, TimeoutError
        return 0, b""


class ServerProcess(procs.ServerProcess):
    """A server on 127.0.0.1:<ephemeral port>, logging to a file, killed when stopped or when we die."""

    def __init__(self, name: str, args: Sequence[str], port: int, log_path: Path, env: dict | None = None,
                 cwd: Path = ROOT) -> None:
        super().__init__(args, port, log_path, name=name, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                         preexec_fn=die_with_parent)

    def rss_mb(self) -> float:
        """Resident memory (VmRSS), in MB (10^6 bytes)."""
        return procs.rss_bytes(self.pid) / 1e6


class Service(procs.RbnServe):
    """``rbn-serve serve`` from the checkout ``root`` (harness.procs.RbnServe: settings as flags, a clean
    environment), killed when we die."""

    def __init__(self, log_path: Path, *flags: str, **settings) -> None:
        super().__init__(log_path, *flags, popen={"stdin": subprocess.DEVNULL, "preexec_fn": die_with_parent},
                         **settings)

    rss_mb = ServerProcess.rss_mb


def python_env(extra: dict | None = None, root: Path = ROOT) -> dict:
    """Our environment with the repository (or another checkout, ``root``) importable and no
    RBN_SERVE_* settings leaking in (``harness.procs.clean_env``, which the servers the tests start get too)."""
    return procs.clean_env(root, extra)


# --- pausing a background job (e.g. training) while measuring ----------------------------------
def _state(pid: int) -> str:
    """The process state letter from /proc/<pid>/stat ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


class Paused:
    """SIGSTOP the given processes (and their children) for the measurement; SIGCONT them on exit.

    A detached watchdog shell resumes them should this process die without doing so (SIGKILL).
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.roots = list(pids)
        self.stopped: list[int] = []
        self._watchdog: subprocess.Popen | None = None

    def __enter__(self) -> Paused:
        if not self.roots:
            return self
        for root in self.roots:
            if not Path(f"/proc/{root}").exists():
                raise ProcessLookupError(f"--pause-pid {root}: no such process")
        targets = [p for root in self.roots for p in process_tree(root)]
        me = os.getpid()
        watch = (f"while s=$(awk '{{print $3}}' /proc/{me}/stat 2>/dev/null) && [ \"$s\" != Z ]; do sleep 1; done; "
                 f"kill -CONT {' '.join(map(str, targets))} 2>/dev/null")
        self._watchdog = subprocess.Popen(["sh", "-c", watch], start_new_session=True, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for pid in targets:
            try:
                os.kill(pid, signal.SIGSTOP)
                self.stopped.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2.0  # the signal is asynchronous: wait until they are stopped
        while time.monotonic() < deadline and any(_state(p) not in ("T", "t", "Z", "X", "") for p in self.stopped):
            time.sleep(0.01)
        progress(f"paused (SIGSTOP) {self.stopped}")
        return self

    def __exit__(self, *exc) -> None:
        self.resume()

    def resume(self) -> None:
        for pid in reversed(self.stopped):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.stopped:
            progress(f"resumed (SIGCONT) {self.stopped}")
        self.stopped = []
        if self._watchdog is not None and self._watchdog.poll() is None:
            self._watchdog.kill()
            self._watchdog.wait()


def dump_json(obj) -> str:
    return json.dumps(obj, sort_keys=True)
