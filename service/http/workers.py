"""``--workers N``: N server processes on one listening socket, kept running by this (parent) process.

Why: one process has one event loop, so its HTTP work (parsing, routing, JSON, metrics) is serial
and, on a small machine, leaves cores idle while it waits; several processes do that work in
parallel (BENCHMARKS.md, "`--workers 2` against one process"). Each worker is a whole server: its own models, batcher, event
loop and limits. The cost is memory (every worker holds the models; on a GPU, GPU memory too) and
batching per worker rather than across them.

The parent reserves the port (a port in use fails once, at once: ``reserve``), makes the folder where the
workers' metric values meet (``service.core.metrics.share_between_processes``), then forks the workers
before it has started any thread or opened any model. Each worker binds a socket of its own to the port
(``SO_REUSEPORT``) and listens on it only once its models are loaded and warm: the kernel hands
connections to listening sockets only, so a new or replacement worker takes no connection before it can
answer it (with one shared socket, a replacement took half the connections and answered 503 not_ready
while it loaded). Afterwards the parent only waits:

- SIGTERM or SIGINT: the same signal once to every worker; each drains as a lone server does (SIGTERM
  after the drain delay, SIGINT without it), and the parent exits when all have: 0 if every worker
  exited 0. A second SIGTERM is not passed on (each worker gets one: a second one would cut its drain
  short); a second SIGINT is (a second Ctrl-C stops the workers without waiting).
- A worker that exits 1 could not start or hit a fatal error (a bad bundle or key file): the others
  are stopped and the parent exits 1, as a lone server would.
- A worker that dies otherwise (killed, crashed) is replaced at once. More than ``MAX_DEATHS``
  deaths within ``DEATH_WINDOW_S`` stop the server (exit 1) instead of looping.

Workers sit in their own process group, so a terminal's Ctrl-C reaches only the parent (which
passes one SIGINT on), and ask Linux for SIGTERM should the parent die (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from service.core.config import Settings
from service.core.metrics import Metrics, share_between_processes
from service.core.runtime import available_cpus, default_threads

log = logging.getLogger(__name__)

MAX_DEATHS = 5
DEATH_WINDOW_S = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # linux/prctl.h

ServeWorker = Callable[[Settings, socket.socket, Metrics], int]
CANNOT_START = "cannot-start"  # in the metrics folder: the first worker that could not start said why
METRICS_PREFIX = "rbn-serve-metrics-"  # + the supervisor's pid + "-": folders of dead supervisors are removed at start


_claim_folder: Path | None = None  # in a worker: the supervisor's folder, where the first "cannot start" is claimed


def say_cannot_start(reason: str, logger: logging.Logger = log) -> None:
    """Log ``cannot start: <reason>``; in a worker only if no other worker has said it (they all meet the same cause)."""
    if _claim_folder is not None:
        try:
            os.close(os.open(_claim_folder / CANNOT_START, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    logger.critical("cannot start: %s", reason)


class CannotStart(Exception):
    """The server cannot start (port, address, key file, bundles): logged as one ``cannot start: ...``
    line, exit 1, by whoever runs the server (``serve``, or once for all workers here)."""


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket (port 0: the kernel picks one), bound before any model loads or thread
    starts: a port in use or an address this host lacks fails at once, as ``CannotStart``."""
    sock = _bound(host, port, reuse_port=False)
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise CannotStart(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _bound(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to host:port and not listening (``CannotStart`` when it cannot be)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CannotStart(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise CannotStart(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def reserve(host: str, port: int) -> socket.socket:
    """The port of ``--workers``: checked free by a bind without SO_REUSEPORT (a server already on it,
    even another ``--workers`` one, fails here as ``CannotStart``), then held by a socket bound with
    SO_REUSEPORT that never listens, so the kernel gives it no connection (port 0: the kernel picks one)."""
    probe = _bound(host, port, reuse_port=False)
    port = probe.getsockname()[1]
    probe.close()
    return _bound(host, port, reuse_port=True)


def worker_socket(reserved: socket.socket) -> socket.socket:
    """A worker's own socket on the reserved port, bound and not yet listening: uvicorn listens on it when
    the app's start-up ends, which ``service.http.server`` holds back until the models are warm."""
    host, port = reserved.getsockname()[:2]
    return _bound(host, port, reuse_port=True)


def worker_settings(settings: Settings) -> Settings:
    """Each worker's share of the CPUs for ONNX Runtime when the threads are left to the default."""
    if settings.intra_op_threads:
        return settings
    share = max(1, available_cpus() // settings.workers)
    return settings.model_copy(update={"intra_op_threads": default_threads(share)})


class Supervisor:
    """The parent process of ``--workers``: listens, forks the workers, replaces the dead, stops them all."""

    def __init__(self, settings: Settings, serve_worker: ServeWorker) -> None:
        self.settings = settings
        self.serve_worker = serve_worker
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self._deaths: deque[float] = deque()

    def run(self) -> int:
        """Serve with ``settings.workers`` processes until stopped; the exit code."""
        settings = self.settings
        try:
            sock = reserve(settings.host, settings.port)
        except CannotStart as exc:
            log.critical("cannot start: %s", exc)
            return 1
        if threading.active_count() > 1:  # a fork copies only the calling thread: workers would inherit broken locks
            log.warning("forking workers with %d threads running", threading.active_count())
        for stale in remove_stale_folders(Path(tempfile.gettempdir())):
            log.info("removed %s, the metrics folder of a supervisor that is gone", stale)
        folder = Path(tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-"))
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        host, port = sock.getsockname()[:2]
        log.info("listening on %s:%d with %d worker processes (metric values in %s)", host, port, settings.workers, folder)
        try:
            for index in range(settings.workers):
                if self.stopping:  # a signal came while the first workers started: start no more
                    break
                self._spawn(index, sock, folder)
            return self._wait(sock, folder)
        finally:
            for sig, handler in previous.items():
                # Once stopping, a late SIGTERM must not kill the exit under way (the interpreter's own
                # shutdown would put the default action back for a Python handler, not for SIG_IGN).
                signal.signal(sig, signal.SIG_IGN if self.stopping else handler)
            sock.close()
            shutil.rmtree(folder, ignore_errors=True)

    # --- parent -----------------------------------------------------------------------------
    def _on_signal(self, sig: int, frame) -> None:
        if not self.stopping:
            self.stopping = True
            log.info("signal %s: stopping %d worker(s)", signal.Signals(sig).name, len(self.children))
            self._send(sig)  # the same signal: SIGTERM drains after the delay, SIGINT (Ctrl-C) without it
        elif sig != signal.SIGTERM:  # every worker has had its one stop signal
            self._send(sig)

    def _send(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _wait(self, sock: socket.socket, folder: Path) -> int:
        code = 0
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            index = self.children.pop(pid, None)
            if index is None:
                continue
            mark_process_dead(pid, str(folder))  # its live gauges leave the sums
            exit_code = os.waitstatus_to_exitcode(status)
            if self.stopping:  # killed by our SIGTERM before it could drain (still starting): a clean stop too
                code = max(code, 0 if exit_code in (0, -signal.SIGTERM) else 1)
                continue
            if exit_code == 1:
                if (folder / CANNOT_START).exists():  # it said why in one line: say no more
                    log.info("worker %d (pid %d) could not start; stopping the other workers", index, pid)
                else:
                    log.critical("worker %d (pid %d) exited 1; stopping the other workers", index, pid)
                code = 1
                self._stop()
                continue
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > DEATH_WINDOW_S:
                self._deaths.popleft()
            if len(self._deaths) > MAX_DEATHS:
                log.critical("workers died %d times within %.0f s; stopping", len(self._deaths), DEATH_WINDOW_S)
                code = 1
                self._stop()
                continue
            log.error("worker %d (pid %d) %s; starting another", index, pid, _ended(exit_code))
            self._spawn(index, sock, folder)
        return code

    def _stop(self) -> None:
        self.stopping = True
        self._send(signal.SIGTERM)

    def _spawn(self, index: int, sock: socket.socket, folder: Path) -> None:
        # Signals wait until the new worker is in self.children, so a stop never misses it.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._worker(index, sock, folder)  # never returns
            self.children[pid] = index
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    # --- worker -----------------------------------------------------------------------------
    def _worker(self, index: int, sock: socket.socket, folder: Path) -> None:
        global _claim_folder
        code = 1
        _claim_folder = folder
        try:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.setpgid(0, 0)
            _die_with_parent()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            share_between_processes(folder)
            own = worker_socket(sock)
            sock.close()  # the parent's reservation: this worker listens on its own socket
            code = self.serve_worker(worker_settings(self.settings), own, Metrics(folder))
        except CannotStart as exc:  # every worker meets the same cause: only the first one says it
            say_cannot_start(str(exc))
        except BaseException:  # noqa: BLE001 - a worker must leave through os._exit, whatever happened
            log.exception("worker %d failed", index)
        finally:
            logging.shutdown()
            os._exit(code)  # never run the parent's clean-up (its finally blocks, atexit) in a worker


def remove_stale_folders(root: Path) -> list[Path]:
    """Remove the metrics folders in ``root`` whose supervisor is gone (SIGKILLed: it could not clean up);
    the supervisor's pid is in each folder's name. Only this user's folders; the removed ones."""
    removed = []
    for folder in root.glob(METRICS_PREFIX + "*"):
        pid = folder.name[len(METRICS_PREFIX):].partition("-")[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid() or _alive(int(pid)):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent dies (a SIGKILLed supervisor leaves no orphans)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _ended(exit_code: int) -> str:
    if exit_code < 0:
        return f"was killed by {signal.Signals(-exit_code).name}"
    return f"exited {exit_code}"
