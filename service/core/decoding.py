"""Uploaded files -> a uint8 (N, C, H, W) batch, with nothing proportional to a file's size on the
event loop: a file of at most ``inline_body_bytes`` bytes and ``inline_decode_pixels`` pixels is
opened and decoded inline (cheaper than a thread hop), anything larger in a bounded pool.

Two steps per request: open every file (its header: format, size; ``service.core.imagecheck`` first,
so even opening costs bounded interpreter time), check the request's pixel budget summed over its
files, then decode. The pool (``Pool``) also parses large ``/v2`` bodies; when its threads are busy
and its queue is full a request gets 503 ``decode_busy`` at once rather than waiting.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from rbn.contract.bundle import InputSpec
from service.core import context, imagecheck
from service.core.corrupting import corrupt_images
from service.core.config import Settings
from service.core.decodeproc import Processes
from service.core.errors import DecodeBusy, ServiceError, TooManyPixels
from service.core.imaging import open_image, render
from service.core.runtime import available_cpus

T = TypeVar("T")


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes and, for multipart uploads, its file name."""

    data: bytes
    filename: str | None = None


class Pool:
    """A thread pool that refuses work beyond its threads plus ``queue_size`` waiting jobs.

    Its threads run at a lower CPU priority than the event loop (Linux: ``nice`` + 10 per thread).
    Decoding in C releases the GIL, so the loop is then only short of a core: on a 2-core machine two
    busy decode threads otherwise made ``/healthz`` wait 100-300 ms for one."""

    def __init__(self, threads: int, queue_size: int, retry_after_s: int) -> None:
        self.capacity = threads + queue_size
        self.jobs = 0  # submitted and not finished (read and written on the event loop only)
        self._retry_after = str(retry_after_s)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="decode", initializer=lower_priority)

    def reserve(self, n: int) -> None:
        """Take ``n`` places or raise 503 ``decode_busy`` (nothing taken)."""
        if self.jobs + n > self.capacity:
            raise DecodeBusy(f"the decode pool is full ({self.jobs} jobs for {self.capacity} places); retry later",
                             headers={"Retry-After": self._retry_after})
        self.jobs += n

    async def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` in the pool; 503 at once when it is full."""
        self.reserve(1)
        (job,) = self._submit(fn, [args])
        return await job

    async def map(self, fn: Callable[..., T], items: list) -> list[T | BaseException]:
        """``fn(item)`` for every item, concurrently, all places taken at once (or none); results or exceptions."""
        self.reserve(len(items))
        return await asyncio.gather(*self._submit(fn, [(item,) for item in items]), return_exceptions=True)

    def _submit(self, fn: Callable[..., T], calls: list[tuple]) -> list[asyncio.Future[T]]:
        """Hand reserved jobs (a place each, already taken) to the threads at once; a job's place comes back when it
        is over: done, or cancelled before a thread took it, or never handed over (the pool shut down). A coroutine
        that released it in ``finally`` leaked the place when its caller was cancelled before the coroutine first
        ran, and freed it early when the caller left mid-decode."""
        loop = asyncio.get_running_loop()
        jobs: list[asyncio.Future[T]] = []
        try:
            for args in calls:
                job = self._executor.submit(fn, *args)
                job.add_done_callback(lambda _: _call_on(loop, self._release))
                jobs.append(asyncio.wrap_future(job, loop=loop))
        except BaseException:
            self.jobs -= len(calls) - len(jobs)
            raise
        return jobs

    def _release(self) -> None:
        self.jobs -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _call_on(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> None:
    """``fn`` on ``loop``'s thread, from any thread; nothing once the loop is closed (the server is gone)."""
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:
        pass


class Decoder:
    """Decodes uploads for every model; one per service (it owns the pool)."""

    def __init__(self, settings: Settings) -> None:
        self.max_pixels = settings.max_image_pixels
        self.max_request_pixels = settings.max_request_pixels
        self.inline_pixels = settings.inline_decode_pixels
        self.inline_bytes = settings.inline_body_bytes
        threads = settings.decode_threads or max(1, min(4, available_cpus()))
        self.pool = Pool(threads, settings.decode_queue_size, settings.retry_after_s)
        self.decode_timeout_s, self.decode_cpu_s = settings.decode_timeout_s, settings.decode_cpu_s
        # started by the first file the pool decodes (the forkserver and one process per pool thread):
        # a server that only ever sees small plain images never starts them
        self.processes = Processes(threads) if settings.decode_timeout_s > 0 else None

    def _open(self, data: bytes) -> Image.Image:
        imagecheck.check(data)
        return open_image(data, self.max_pixels)

    def _inline(self, data: bytes) -> bool:
        """Whether a file is opened and decoded on the event loop: small, and plain (no progressive scans, no
        compressed metadata: ``imagecheck.check``, which also refuses a hostile file here, at bounded cost)."""
        return len(data) <= self.inline_bytes and imagecheck.check(data)

    async def decode(self, uploads: list[Upload], spec: InputSpec) -> np.ndarray:
        """uint8 (N, C, H, W) for ``spec``; an error names the file when there are several."""
        if self.processes is not None:
            return await self._decode_stoppable(uploads, spec)
        count = len(uploads)
        images: list[Image.Image | None] = [None] * count
        large, inline = [], [False] * count
        for i, upload in enumerate(uploads):
            try:
                inline[i] = self._inline(upload.data)
                if inline[i]:
                    images[i] = open_image(upload.data, self.max_pixels)
            except ServiceError as exc:
                raise _for_file(exc, i, upload, count) from None
            if not inline[i]:
                large.append(i)
        if large:
            opened = await self._in_pool(self._open, [uploads[i].data for i in large], large, uploads)
            for i, image in zip(large, opened, strict=True):
                images[i] = image
        total = sum(image.width * image.height for image in images)
        if total > self.max_request_pixels:
            raise TooManyPixels(f"the request's {count} image(s) hold {total} pixels together; "
                                f"the limit is {self.max_request_pixels} per request")
        out = np.empty((count, spec.channels, spec.height, spec.width), np.uint8)
        heavy = []
        for i, image in enumerate(images):
            if inline[i] and image.width * image.height <= self.inline_pixels:
                try:
                    out[i] = render(image, spec)
                except ServiceError as exc:
                    raise _for_file(exc, i, uploads[i], count) from None
            else:
                heavy.append(i)
        if heavy:
            done = await self._in_pool(lambda image: render(image, spec), [images[i] for i in heavy], heavy, uploads)
            for i, pixels in zip(heavy, done, strict=True):
                out[i] = pixels
        return out

    async def _decode_stoppable(self, uploads: list[Upload], spec: InputSpec) -> np.ndarray:
        """``decode`` with the pool's work in killable processes (``service.core.decodeproc``): small plain files
        on the event loop as before, every other file decoded whole in a worker process under the request's
        deadline (``decode_timeout_s``); the request's pixel budget is then checked on what was decoded."""
        count = len(uploads)
        out = np.empty((count, spec.channels, spec.height, spec.width), np.uint8)
        pixels, remote = [0] * count, []
        for i, upload in enumerate(uploads):
            try:
                if self._inline(upload.data):
                    image = open_image(upload.data, self.max_pixels)
                    pixels[i] = image.width * image.height
                    if pixels[i] <= self.inline_pixels:
                        out[i] = render(image, spec)
                        continue
            except ServiceError as exc:
                raise _for_file(exc, i, upload, count) from None
            remote.append(i)
        if remote:
            current = context.current.get()
            gone = None if current is None else current.client_gone
            processes, cap, timeout_s, cpu_s = self.processes, self.max_pixels, self.decode_timeout_s, self.decode_cpu_s

            def job(data: bytes) -> tuple[np.ndarray, int]:
                return processes.decode(data, spec, cap, timeout_s, cpu_s, gone)

            done = await self._in_pool(job, [uploads[i].data for i in remote], remote, uploads)
            for i, (decoded, size) in zip(remote, done, strict=True):
                out[i], pixels[i] = decoded, size
        total = sum(pixels)
        if total > self.max_request_pixels:
            raise TooManyPixels(f"the request's {count} image(s) hold {total} pixels together; "
                                f"the limit is {self.max_request_pixels} per request")
        return out

    async def _in_pool(self, fn: Callable[..., T], items: list, indices: list[int], uploads: list[Upload]) -> list[T]:
        """``fn`` over ``items`` (the files at ``indices``) in the pool; the first failure raised, naming its file."""
        results = await self.pool.map(fn, items)
        for i, result in zip(indices, results, strict=True):
            if isinstance(result, ServiceError):
                raise _for_file(result, i, uploads[i], len(uploads))
            if isinstance(result, BaseException):
                raise result
        return results

    async def corrupt(self, images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
        """/ab's server-side corruption of decoded uint8 (N, C, H, W) images (``corrupting.corrupt_images``):
        on the event loop while the batch holds at most ``inline_decode_pixels`` values (28x28 images),
        else in the pool (at 224x224 RGB one zoom blur costs a second or more); 503 when the pool is full."""
        if images.size <= self.inline_pixels:
            return corrupt_images(images, name, severity, seed)
        return await self.pool.run(corrupt_images, images, name, severity, seed)

    def shutdown(self) -> None:
        self.pool.shutdown()
        if self.processes is not None:
            self.processes.shutdown()


def lower_priority(step: int = 10) -> None:
    """Make the calling thread ``step`` nice levels kinder (Linux only: elsewhere the call would renice the process)."""
    if sys.platform != "linux":
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except OSError:  # not permitted here: keep the default priority
        pass


def _for_file(exc: ServiceError, index: int, upload: Upload, count: int) -> ServiceError:
    """The same error, naming the file when the request holds several or the file has a name."""
    if count == 1 and upload.filename is None:
        return exc
    name = f" ({upload.filename})" if upload.filename else ""
    return type(exc)(f"file {index}{name}: {exc.message}", exc.headers)
