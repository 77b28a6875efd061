"""Decoding that can be stopped: the decode pool's work in worker processes that are killed and replaced
when a request's decode deadline passes or its client leaves.

A thread cannot be interrupted inside libjpeg, libpng or libwebp: an image that costs seconds (a 4096 x
4096 WebP of noise: 3.4 s here) held its pool thread to the end, after its client had gone. Here each pool
thread takes one of the worker processes (forkserver: forked from a clean server that imported Pillow and
numpy, never from the serving process and its threads; all started by the pool's first file) and hands it one file at a time through a pipe: the bytes in,
the uint8 (C, H, W) pixels (or the ``ServiceError``) out. The thread waits in short slices; when the
file's decoding has run ``decode_timeout_s`` or used ``decode_cpu_s`` of CPU (its own work: the wait for a
free process is bounded by the pool's queue, not by this deadline; CPU time, because on a busy machine a
niced worker's wall time says little of what the image costs) or the client is gone it kills the process (SIGKILL: the CPU is freed at once), starts
another, and the request gets 422 ``decode_timeout`` (or nothing: its client is gone).

The cost: the file's bytes and the pixels cross a pipe (a 3 MB photo: ~2 ms), and a killed worker is
replaced in ~20-50 ms (a fork of the forkserver). Small plain files are still decoded on the event loop
(``service.core.decoding``), so this costs nothing to the common small request.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np

from rbn.contract.bundle import InputSpec
from service.core.errors import ClientGone, ServiceError

log = logging.getLogger(__name__)

SLICE_S = 0.05  # how often a waiting thread looks at the deadline and the client


class DecodeTimeout(ServiceError):
    """Decoding one file took longer than ``decode_timeout_s``; the work was stopped."""

    status, code = 422, "decode_timeout"


def decode_file(data: bytes, spec: InputSpec, max_pixels: int) -> tuple[np.ndarray, int]:
    """The whole pool job for one file: structure check, header, decode and preprocess -> (pixels, width x height)."""
    from service.core import imagecheck
    from service.core.imaging import open_image, render

    imagecheck.check(data)
    image = open_image(data, max_pixels)
    pixels = image.width * image.height  # as the header says: decoding a JPEG in draft mode shrinks the image
    return render(image, spec), pixels


def _serve(conn: Connection) -> None:
    """A worker process: decode jobs until the pipe closes."""
    try:
        os.nice(10)  # below the serving process, as the decode threads are
    except OSError:
        pass
    while True:
        try:
            data, spec, max_pixels = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result: object = ("ok", decode_file(data, spec, max_pixels))
        except ServiceError as exc:
            result = ("error", type(exc), exc.message)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which logs it
            result = ("crash", repr(exc)[:500])
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            return


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc; 0 elsewhere: only the wall deadline holds)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


class _Worker:
    def __init__(self, context) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True, name="rbn-decode")
        self.process.start()
        child.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class Processes:
    """Worker processes for the decode pool's threads: a thread takes an idle one for a job and gives it back;
    one killed for a deadline or a departed client is replaced by a new one."""

    def __init__(self, count: int) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["service.core.decodeproc", "service.core.imaging", "numpy", "PIL.Image"])
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.count = count
        self.killed = 0  # workers killed (deadline or client gone), for tests and logs

    def start(self) -> None:
        """Start the forkserver and every worker now (seconds: imports) rather than on first use."""
        for _ in range(self.count):
            self._idle.put(self._new())

    def _new(self) -> _Worker:
        worker = _Worker(self._context)
        with self._lock:
            self._all.add(worker)
        return worker

    def _take(self) -> _Worker:
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            return self._new()
        return worker if worker.process.is_alive() else self._replace(worker)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        with self._lock:
            self._all.discard(worker)
        return self._new()

    def _drop(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)
            self.killed += 1
        if not self._closed:
            self._idle.put(self._new())

    def decode(self, data: bytes, spec: InputSpec, max_pixels: int, timeout_s: float, cpu_s: float,
               gone: Callable[[], bool] | None) -> tuple[np.ndarray, int]:
        """``decode_file`` in a worker process, stopped after ``timeout_s`` seconds or ``cpu_s`` seconds of
        its CPU, or when ``gone()``; runs in a pool thread (it blocks)."""
        if gone is not None and gone():
            # Left while the job waited for a thread (a burst of clients closing at once): no worker to stop and
            # replace. Killing one per departed client cost a process start each and held the pool for seconds.
            raise ClientGone("the client left before its image was decoded")
        worker = self._take()
        try:
            worker.conn.send((data, spec, max_pixels))
            deadline = time.monotonic() + timeout_s
            cpu_start = cpu_seconds(worker.process.pid)
            while not worker.conn.poll(SLICE_S):
                if gone is not None and gone():
                    raise ClientGone("the client left while its image was decoded")
                if time.monotonic() > deadline:
                    raise DecodeTimeout(f"decoding the image took longer than {timeout_s:g} s (decode_timeout_s); "
                                        "it was stopped: send a smaller or simpler image")
                if cpu_seconds(worker.process.pid) - cpu_start > cpu_s:
                    raise DecodeTimeout(f"decoding the image took more than {cpu_s:g} s of CPU (decode_cpu_s); "
                                        "it was stopped: send a smaller or simpler image")
            reply = worker.conn.recv()
        except (ClientGone, DecodeTimeout) as exc:
            log.info("decode worker %d stopped (%s): %s", worker.process.pid, exc.code, exc.message)
            self._drop(worker)
            raise
        except (EOFError, OSError) as exc:  # the worker died (killed from outside, out of memory)
            self._drop(worker)
            raise RuntimeError(f"a decode worker process died: {exc!r}") from None
        self._idle.put(worker)
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "error":
            raise reply[1](reply[2])
        raise RuntimeError(f"decoding failed in a worker process: {reply[1]}")

    def shutdown(self) -> None:
        self._closed = True
        with self._lock:
            workers, self._all = list(self._all), set()
        for worker in workers:
            worker.kill()
