"""Dynamic batching per model, as Triton does it, without making a lone request wait.

Requests (each one or more images) queue per model; one dispatcher task forms batches of up to
``max_batch_size`` images and hands each to a worker thread that runs ONNX Runtime. A batch goes
as soon as it is full, or as soon as an inference slot is free and either the runtime is idle
(nothing to wait for) or ``max_queue_delay`` has passed since its first request was taken. While
every slot is busy the batch keeps filling. The queue is bounded in images: a request that does
not fit is refused at once (503 with Retry-After), memory never grows.

Samples never mix: the graph computes each sample's statistics from that sample alone, so a
request's outputs are the same whatever it is batched with.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from service.errors import InferenceFailed, QueueFull, ServiceError, ShuttingDown

log = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, ...]
BatchObserver = Callable[[int, float, list[float]], None]  # (images, inference seconds, queue waits)


@dataclass(frozen=True)
class BatchSlice:
    """One request's slice of a batch's outputs (positional, as the runtime returns them), with the batch's
    timings. ``service.model.Inference`` is what the model makes of one or more slices: named outputs."""

    outputs: Outputs
    queue_s: float
    infer_s: float
    batch_size: int


@dataclass(eq=False)
class _Request:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def n(self) -> int:
        return len(self.x)


def merge(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack requests along the batch axis (no copy for a single request)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def split(outputs: Outputs, sizes: list[int]) -> list[Outputs]:
    """Cut every output of a batch back into per-request slices (views), in request order."""
    if any(len(o) != sum(sizes) for o in outputs):
        raise ValueError(f"outputs of {[len(o) for o in outputs]} rows for requests of {sizes} images")
    bounds = np.cumsum([0, *sizes]).tolist()
    return [tuple(o[a:b] for o in outputs) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class Workers(Executor):
    """``count`` daemon threads that run submitted calls in order.

    Unlike ThreadPoolExecutor, whose threads the interpreter joins at exit, a call that never
    returns (a hung inference) cannot keep the process alive after ``shutdown(wait=False)``.
    """

    def __init__(self, count: int, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop each thread after its current call; with ``wait``, join them."""
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class Batcher:
    """Coalesce concurrent requests for one model into batches; ``run`` blocks and runs in a thread.

    ``max_queue_size`` must hold a full batch (``Settings`` checks it, once, at start-up)."""

    def __init__(self, name: str, run: Callable[[np.ndarray], Outputs], max_batch_size: int,
                 max_queue_delay_s: float, max_queue_size: int, instances: int = 1,
                 retry_after_s: int = 1, observer: BatchObserver | None = None) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.instances = instances
        self._run = run
        self._retry_after = str(retry_after_s)
        self._observer = observer
        self.queued_images = 0  # images waiting, read by the metrics collector
        self.pending = 0  # requests submitted and not yet answered
        self._free = instances
        self._closing = False
        self._forming: list[_Request] = []  # the batch being collected or waiting for a slot
        self._executing: set[tuple[_Request, ...]] = set()  # batches handed to a worker, not finished
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> int:
        """Batches executing now."""
        return self.instances - self._free

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def abandoned(self) -> int:
        """Batches still running in a worker thread after ``stop`` gave up on them."""
        return len(self._executing) if self._closing else 0

    def start(self) -> None:
        """Create the queue, the wake-up event, the worker threads and the dispatcher, in the running loop."""
        self._loop = asyncio.get_running_loop()
        self._queue: deque[_Request] = deque()
        self._wake = asyncio.Event()
        self._executor = Workers(self.instances, f"ort-{self.name}")
        self._task = self._loop.create_task(self._dispatch_forever(), name=f"batcher-{self.name}")

    async def submit(self, x: np.ndarray) -> BatchSlice:
        """Queue (n, ...) inputs (n <= max_batch_size) and wait for their outputs."""
        n = len(x)
        if self._closing:
            raise ShuttingDown(f"model {self.name} is shutting down")
        if not 0 < n <= self.max_batch_size:
            raise ValueError(f"a request holds 1..{self.max_batch_size} images, got {n}")
        if self.queued_images + n > self.max_queue_size:
            raise QueueFull(
                f"model {self.name}: queue full ({self.queued_images} of {self.max_queue_size} images waiting); retry later",
                headers={"Retry-After": self._retry_after},
            )
        request = _Request(x, self._loop.create_future())  # registered before it is queued
        self._queue.append(request)
        self.queued_images += n
        self.pending += 1
        self._wake.set()
        try:
            return await request.future
        finally:
            self.pending -= 1
            if not request.future.done():  # our caller was cancelled: the dispatcher skips it
                request.future.cancel()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, let queued and running batches finish for up to ``timeout_s``, then stop
        the workers. Whatever is still queued or running then gets ShuttingDown; a batch still running
        keeps its (daemon) thread until it returns, but neither stop nor the process exit waits for it."""
        self._closing = True
        deadline = time.monotonic() + timeout_s
        while (self._queue or self._forming or self.running) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for request in [*self._forming, *self._queue]:
            if not request.future.done():
                request.future.set_exception(ShuttingDown(f"model {self.name} stopped before this request ran"))
        self._queue.clear()
        self._forming = []
        self.queued_images = 0
        for batch in self._executing:
            log.error("model %s: a batch of %d request(s) still ran after %.1f s; answering them ShuttingDown",
                      self.name, len(batch), timeout_s)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(ShuttingDown(f"model {self.name} stopped before this request finished"))
        self._executor.shutdown(wait=not self._executing, cancel_futures=True)

    # --- dispatcher ----------------------------------------------------------------------------
    async def _dispatch_forever(self) -> None:
        while True:
            await self._next_batch()
            while self._free == 0:  # a full batch waits for a slot
                await self._sleep(None)
            batch = [r for r in self._forming if not r.future.done()]  # clients gone while it waited
            self._forming = []
            if batch:
                self._free -= 1
                self._execute(batch)

    def _take(self, batch: list[_Request], n: int) -> int:
        """Move waiting requests that fit into ``batch``; returns its image count."""
        queue = self._queue
        while queue and n + queue[0].n <= self.max_batch_size:
            request = queue.popleft()
            self.queued_images -= request.n
            if not request.future.done():  # skip requests whose client went away
                batch.append(request)
                n += request.n
        return n

    async def _next_batch(self) -> None:
        """Fill ``self._forming`` until it should go."""
        batch = self._forming
        n = 0
        deadline = 0.0
        while True:
            had = n
            n = self._take(batch, n)
            if had == 0 and n:
                deadline = time.monotonic() + self.max_queue_delay_s  # one deadline per batch
            if n and (n >= self.max_batch_size or self._queue):
                return  # full, or the next request does not fit
            if n and self._free and (self._free == self.instances or time.monotonic() >= deadline):
                return  # a slot is free and nothing is worth waiting for
            timeout = deadline - time.monotonic() if n and self._free else None
            await self._sleep(timeout)

    async def _sleep(self, timeout: float | None) -> None:
        """Until a request arrives, a slot frees or ``timeout`` passes."""
        self._wake.clear()
        timer = self._loop.call_later(timeout, self._wake.set) if timeout is not None else None
        try:
            await self._wake.wait()
        finally:
            if timer is not None:
                timer.cancel()

    def _execute(self, batch: list[_Request]) -> None:
        started = time.perf_counter()
        try:
            x = merge([r.x for r in batch])
        except ValueError as exc:  # mismatched shapes: a bug upstream, answer rather than hang
            self._finish(batch, started, (), _failed(exc))
            return
        key = tuple(batch)
        self._executing.add(key)
        done = self._loop.run_in_executor(self._executor, _timed, self._run, x)
        done.add_done_callback(partial(self._finish, batch, started, key))

    def _finish(self, batch: list[_Request], started: float, key: tuple[_Request, ...], done: asyncio.Future) -> None:
        self._executing.discard(key)
        try:
            exc = done.exception()
            if exc is not None:
                error = exc if isinstance(exc, ServiceError) else InferenceFailed(f"model {self.name}: inference failed: {exc}")
                if not isinstance(exc, ServiceError):
                    log.error("model %s: inference failed on a batch of %d", self.name, len(batch), exc_info=exc)
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                return
            outputs, infer_s = done.result()
            sizes = [r.n for r in batch]
            waits = [started - r.enqueued for r in batch]
            for request, part, wait in zip(batch, split(outputs, sizes), waits, strict=True):
                if not request.future.done():
                    request.future.set_result(BatchSlice(part, wait, infer_s, sum(sizes)))
            if self._observer is not None:
                self._observer(sum(sizes), infer_s, waits)
        except Exception as exc:  # never leave a caller waiting
            log.exception("model %s: cannot deliver a batch's outputs", self.name)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(InferenceFailed(f"model {self.name}: {exc}"))
        finally:
            self._free += 1
            self._wake.set()


def _timed(run: Callable[[np.ndarray], Outputs], x: np.ndarray) -> tuple[Outputs, float]:
    start = time.perf_counter()
    outputs = run(x)
    return outputs, time.perf_counter() - start


def _failed(exc: Exception) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
