"""Dynamic batching per model, as Triton does it, without making a lone request wait.

Requests (each one or more images) queue per model; one dispatcher task forms batches of up to
``max_batch_size`` images and hands each to a worker thread that runs ONNX Runtime. A batch goes
as soon as it is full, or as soon as an inference slot is free and either the runtime is idle
(nothing to wait for) or ``max_queue_delay`` has passed since its first request was taken. While
every slot is busy the batch keeps filling. A request that finds the batcher idle (nothing queued,
every slot free) goes to a worker straight from ``submit``, without the dispatcher's wake-up in
between: the same batch of one, sooner. The queue is bounded in images: a request that does
not fit is refused at once (503 with Retry-After), memory never grows.

Samples never mix: the graph computes each sample's statistics from that sample alone, so a
request's outputs are the same whatever it is batched with.

Failures stay contained. A request whose client has disconnected, or that waited longer than
``max_queue_wait_s``, is dropped before a batch forms (a watchdog also sweeps the queue while every
slot is busy). A failing batch of several requests is retried one request at a time, so one bad
input fails only itself; clients get a generic message (their request id is in the answer), the
details go to the log. After ``unready_after_failures`` consecutive failed batches the batcher is
``unhealthy`` (readiness false) and the watchdog runs a canary batch of zeros each tick; its
success clears it. If the dispatcher task dies, every waiting request gets 503 at once, new ones
too, and ``failure`` says why (readiness false).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
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

from service.core import context as request_context
from service.core.errors import (ClientGone, DeadlineExceeded, InferenceFailed, QueueFull, QueueTimeout, ServiceError,
                                 ShuttingDown, Unavailable)

log = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, ...]
BatchObserver = Callable[[int, float, list[float]], None]  # (images, inference seconds, queue waits)


@dataclass(frozen=True)
class BatchSlice:
    """One request's slice of a batch's outputs (positional, as the runtime returns them), with the batch's
    timings. ``service.core.model.Inference`` is what the model makes of one or more slices: named outputs."""

    outputs: Outputs
    queue_s: float
    infer_s: float
    batch_size: int


@dataclass(eq=False)
class _Request:
    x: np.ndarray
    future: asyncio.Future
    gone: Callable[[], bool] | None = None  # true once the client has disconnected
    request_id: str | None = None
    deadline: float | None = None  # time.monotonic() after which nobody waits (the request context's)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def n(self) -> int:
        return len(self.x)


def merge(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack requests along the batch axis (no copy for a single request)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def split(outputs: Outputs, sizes: list[int]) -> list[Outputs]:
    """Cut every output of a batch back into per-request slices (views), in request order."""
    total = sum(sizes)
    if any(len(o) != total for o in outputs):
        raise ValueError(f"outputs of {[len(o) for o in outputs]} rows for requests of {sizes} images")
    if len(sizes) == 1:  # a lone request: its outputs as they are (numpy's cumsum on a short list cost ~20 us)
        return [outputs]
    bounds = [0, *itertools.accumulate(sizes)]
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
                 retry_after_s: int = 1, observer: BatchObserver | None = None, max_queue_wait_s: float = 10.0,
                 unready_after_failures: int = 5) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.instances = instances
        self._run = run
        self._retry_after = str(retry_after_s)
        self._observer = observer
        self.max_queue_wait_s = max_queue_wait_s
        self.unready_after_failures = unready_after_failures
        self.failed_batches = 0  # consecutive batches whose every request failed
        self.failure: str | None = None  # why the dispatcher stopped, if it did
        self.dropped_gone = 0  # requests dropped because their client disconnected
        self._canary: asyncio.Task | None = None
        self._sample: np.ndarray | None = None  # zeros shaped like one image: the canary's input
        self._swept = 0.0  # when the queue was last swept (a full queue sweeps at most every 10 ms)
        self.queued_images = 0  # images waiting, read by the metrics collector
        self.pending = 0  # requests submitted and not yet answered
        self._free = instances
        self._closing = False
        self._forming: list[_Request] = []  # the batch being collected or waiting for a slot
        self._executing: set[tuple[_Request, ...]] = set()  # batches handed to a worker, not finished
        self._task: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None

    @property
    def running(self) -> int:
        """Batches executing now."""
        return self.instances - self._free

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def unhealthy(self) -> str | None:
        """Why this model should not get traffic (dead dispatcher, consecutive failures), else None."""
        if self.failure is not None:
            return self.failure
        if self.failed_batches >= self.unready_after_failures:
            return f"model {self.name}: the last {self.failed_batches} inference batches failed"
        return None

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
        self._task.add_done_callback(self._dispatcher_ended)
        self._watchdog = self._loop.create_task(self._watch(), name=f"batcher-watchdog-{self.name}")

    async def submit(self, x: np.ndarray) -> BatchSlice:
        """Queue (n, ...) inputs (n <= max_batch_size) and wait for their outputs."""
        n = len(x)
        if self._closing:
            raise ShuttingDown(f"model {self.name} is shutting down")
        if self.failure is not None:
            raise Unavailable(f"model {self.name} cannot run requests now (its batcher stopped); retry on another replica")
        if not 0 < n <= self.max_batch_size:
            raise ValueError(f"a request holds 1..{self.max_batch_size} images, got {n}")
        if self.queued_images + n > self.max_queue_size and time.perf_counter() - self._swept > 0.01:
            self._sweep()  # requests of clients that left, or that waited too long, give their places up first
        if self.queued_images + n > self.max_queue_size:
            raise QueueFull(
                f"model {self.name}: queue full ({self.queued_images} of {self.max_queue_size} images waiting); retry later",
                headers={"Retry-After": self._retry_after},
            )
        context = request_context.current.get()
        gone = None if context is None else context.client_gone
        if gone is not None and gone():  # its client left while it was read or decoded: never queue it
            self.dropped_gone += 1
            raise ClientGone("the client disconnected before its images were queued")
        if self._sample is None:
            self._sample = np.zeros_like(x[:1])
        request = _Request(x, self._loop.create_future(), gone, None if context is None else context.request_id,
                           None if context is None else context.deadline)
        self.pending += 1  # registered before it is queued
        if self._idle():
            # Nothing to batch with and every slot free: the dispatcher would send it alone at once
            # anyway, so send it from here and spare a lone request the dispatcher's wake-up.
            self._free -= 1
            self._execute([request])
        else:
            self._queue.append(request)
            self.queued_images += n
            self._wake.set()
        try:
            return await request.future
        finally:
            self.pending -= 1
            if not request.future.done():  # our caller was cancelled: the dispatcher skips it
                request.future.cancel()

    def _idle(self) -> bool:
        """No request waiting or forming, no batch running, and the dispatcher alive."""
        return (self._free == self.instances and not self._queue and not self._forming
                and self._task is not None and not self._task.done())

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, let queued and running batches finish for up to ``timeout_s``, then stop
        the workers. Whatever is still queued or running then gets ShuttingDown; a batch still running
        keeps its (daemon) thread until it returns, but neither stop nor the process exit waits for it."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
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
            now = time.perf_counter()
            batch = [r for r in self._forming if self._wanted(r, now)]  # clients gone while it waited
            self._forming = []
            if batch:
                self._free -= 1
                self._execute(batch)

    def _take(self, batch: list[_Request], n: int) -> int:
        """Move waiting requests that fit into ``batch``; returns its image count."""
        queue = self._queue
        now = time.perf_counter()
        while queue and n + queue[0].n <= self.max_batch_size:
            request = queue.popleft()
            self.queued_images -= request.n
            if self._wanted(request, now):
                batch.append(request)
                n += request.n
        return n

    def _wanted(self, request: _Request, now: float) -> bool:
        """False, and the request answered, when nobody waits for it any more or it waited too long."""
        if request.future.done():  # its caller was cancelled
            return False
        if request.gone is not None and request.gone():
            self.dropped_gone += 1
            request.future.set_exception(ClientGone("the client disconnected before its images ran"))
            return False
        if request.deadline is not None and time.monotonic() > request.deadline:
            request.future.set_exception(DeadlineExceeded("the request's deadline passed while its images waited"))
            return False
        if now - request.enqueued > self.max_queue_wait_s:
            request.future.set_exception(QueueTimeout(
                f"model {self.name}: waited more than {self.max_queue_wait_s:g} s in the batch queue (max_queue_wait_s); "
                "retry later", headers={"Retry-After": self._retry_after}))
            return False
        return True

    async def _watch(self) -> None:
        """Every tick: answer queued requests that expired or lost their client (while every slot is
        busy the dispatcher does not look), and send a canary while unhealthy."""
        tick = min(1.0, self.max_queue_wait_s / 4)
        while True:
            await asyncio.sleep(tick)
            self._sweep()
            if (self.failure is None and self.failed_batches >= self.unready_after_failures and self._sample is not None
                    and (self._canary is None or self._canary.done())):
                context = contextvars.Context()  # no client to lose, no request id
                self._canary = self._loop.create_task(self.submit(self._sample), context=context)
                self._canary.add_done_callback(lambda task: task.cancelled() or task.exception())

    def _sweep(self) -> None:
        """Answer and drop queued requests that lost their client or waited too long."""
        now = self._swept = time.perf_counter()
        if self._queue:
            kept = deque(r for r in self._queue if self._wanted(r, now))
            self.queued_images = sum(r.n for r in kept)
            self._queue = kept
        for request in self._forming:
            self._wanted(request, now)

    def _dispatcher_ended(self, task: asyncio.Task) -> None:
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        self.failure = f"model {self.name}: the batch dispatcher stopped ({exc!r})"
        log.critical("%s; answering every waiting request 503, readiness is false", self.failure, exc_info=exc)
        error = Unavailable(f"model {self.name} cannot run requests now (its batcher stopped); retry on another replica")
        for request in [*self._forming, *self._queue]:
            if not request.future.done():
                request.future.set_exception(error)
        self._queue.clear()
        self._forming = []
        self.queued_images = 0

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
        retrying = False
        try:
            exc = done.exception()
            if exc is not None:
                if len(batch) > 1 and not isinstance(exc, ServiceError) and not self._closing:
                    # One bad input must fail only itself: run each request alone, the slot still held.
                    log.warning("model %s: a batch of %d requests failed (%s); retrying each alone",
                                self.name, len(batch), str(exc).partition("\n")[0])
                    retry = self._loop.run_in_executor(self._executor, _each, self._run, [r.x for r in batch])
                    retry.add_done_callback(partial(self._finish_each, batch, started, key))
                    retrying = True
                    return
                for request in batch:
                    self._fail(request, exc)
                self.failed_batches += 1
                return
            outputs, infer_s = done.result()
            self.failed_batches = 0
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
                self._fail(request, exc)
        finally:
            if not retrying:
                self._release(key)

    def _finish_each(self, batch: list[_Request], started: float, key: tuple[_Request, ...], done: asyncio.Future) -> None:
        """The per-request retry of a failed batch is done: answer each request with its own outcome."""
        try:
            exc = done.exception()
            results = [exc] * len(batch) if exc is not None else done.result()
            succeeded = 0
            for request, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    self._fail(request, result)
                    continue
                outputs, infer_s = result
                succeeded += 1
                wait = started - request.enqueued
                if not request.future.done():
                    request.future.set_result(BatchSlice(outputs, wait, infer_s, request.n))
                if self._observer is not None:
                    self._observer(request.n, infer_s, [wait])
            self.failed_batches = 0 if succeeded else self.failed_batches + 1
        except Exception as exc:  # never leave a caller waiting
            log.exception("model %s: cannot deliver a retried batch's outputs", self.name)
            for request in batch:
                self._fail(request, exc)
        finally:
            self._release(key)

    def _fail(self, request: _Request, exc: BaseException) -> None:
        """Answer one request with a failure: a ServiceError as it is; anything else generic to the
        client (its request id is in the answer) and in full in the log."""
        if request.future.done():
            return
        if isinstance(exc, ServiceError):
            request.future.set_exception(exc)
            return
        log.error("model %s: inference failed for a request of %d image(s)", self.name, request.n, exc_info=exc,
                  extra={"request_id": request.request_id})
        request.future.set_exception(InferenceFailed(
            f"model {self.name}: inference failed for this request; the server log has the details under its request id"))

    def _release(self, key: tuple[_Request, ...]) -> None:
        self._executing.discard(key)
        self._free += 1
        self._wake.set()


def _each(run: Callable[[np.ndarray], Outputs], xs: list[np.ndarray]) -> list[tuple[Outputs, float] | BaseException]:
    """Run every input alone; each result is (outputs, seconds) or the exception it raised."""
    results: list[tuple[Outputs, float] | BaseException] = []
    for x in xs:
        try:
            results.append(_timed(run, x))
        except Exception as exc:  # noqa: BLE001 - handed to that request's caller
            results.append(exc)
    return results


def _timed(run: Callable[[np.ndarray], Outputs], x: np.ndarray) -> tuple[Outputs, float]:
    start = time.perf_counter()
    outputs = run(x)
    return outputs, time.perf_counter() - start


def _failed(exc: Exception) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
