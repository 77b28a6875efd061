"""The batcher's edges, exactly: the worker threads (names, order, errors, cancelled and shut-down jobs), the
bounds of a request (1..max_batch_size images), every refusal's message and headers, the timings and sizes
handed to each caller and to the observer, the health rule at its threshold, the drops of requests nobody
waits for (deadline, queue wait, gone client, a full queue swept first), a failing batch retried alone (a
ServiceError is not), stop and a dead dispatcher. Runners are plain functions; the values are worked by hand."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from service.core import context as request_context
from service.core.batching import Batcher, BatchSlice, Workers, split
from service.core.errors import (ClientGone, DeadlineExceeded, InferenceFailed, QueueFull, QueueTimeout, ShuttingDown,
                                 Unavailable)

# Each test takes a second or less; a batcher bug that leaves a caller waiting fails here in 30 s rather than
# at the suite's 300 s (which also keeps the mutation run of batching.py short).
pytestmark = pytest.mark.timeout(30)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the batcher"
        await asyncio.sleep(0.001)


def image(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 2, 2), value, np.float32)


def sums(x: np.ndarray):
    """Each image's pixel sum, and its first row."""
    return x.reshape(len(x), -1).sum(axis=1), x[:, 0, :]


class Held:
    """A runner that blocks until ``release`` is set; records each batch's images."""

    def __init__(self, run=sums) -> None:
        self.batches: list[list[float]] = []
        self.threads: list[str] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.run = run

    def __call__(self, x):
        self.batches.append([float(v) for v in x[:, 0, 0]])
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.release.wait(30)
        return self.run(x)


async def occupied(run=None, **settings) -> tuple[Held, Batcher, asyncio.Future]:
    """A started batcher of model "m" whose first request (``image(1.0)``) is inside ``run`` (held there until the
    test sets ``held.release``): the slot is busy, so what the test submits next queues."""
    held = Held(run) if run is not None else Held()
    batcher = Batcher("m", held, **settings)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(image(1.0)))
    await asyncio.to_thread(held.entered.wait, 30)
    return held, batcher, first


def in_context(batcher: Batcher, x: np.ndarray, request_id: str = "r", gone=None, deadline=None):
    async def submit():
        request_context.current.set(request_context.RequestContext(request_id, client_gone=gone, deadline=deadline))
        return await batcher.submit(x)

    return asyncio.ensure_future(submit())


# --- Workers -----------------------------------------------------------------------------------------------------
def test_workers_are_named_daemon_threads_that_run_calls_and_hand_errors_back():
    workers = Workers(2, "ort-m")
    try:
        names = sorted(t.name for t in workers._threads)
        assert names == ["ort-m_0", "ort-m_1"] and all(t.daemon and t.is_alive() for t in workers._threads)
        assert workers.submit(lambda a, b=0: a * 10 + b, 4, b=2).result(10) == 42
        failing = workers.submit(int, "not a number")
        with pytest.raises(ValueError):
            failing.result(10)
    finally:
        workers.shutdown(wait=True)
    assert not any(t.is_alive() for t in workers._threads)


def test_shutdown_cancels_the_calls_not_started_and_skips_a_cancelled_one():
    workers = Workers(1, "w")
    gate, started, ran = threading.Event(), threading.Event(), []
    busy = workers.submit(lambda: started.set() or (gate.wait(30) and ran.append("busy")))
    assert started.wait(10)
    skipped = workers.submit(ran.append, "cancelled first")
    skipped.cancel()
    queued = [workers.submit(ran.append, i) for i in range(3)]
    workers.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    gate.set()
    busy.result(10)
    for thread in workers._threads:
        thread.join(10)
    assert ran == ["busy"] and not any(t.is_alive() for t in workers._threads)


def test_without_cancel_futures_the_queued_calls_still_run_and_a_cancelled_one_is_skipped():
    workers = Workers(1, "w")
    gate, started, ran = threading.Event(), threading.Event(), []
    workers.submit(lambda: started.set() or gate.wait(30))
    assert started.wait(10)
    futures = [workers.submit(ran.append, i) for i in range(4)]
    futures[1].cancel()
    gate.set()
    workers.shutdown()  # by default: waits, and cancels nothing
    assert ran == [0, 2, 3] and [f.cancelled() for f in futures] == [False, True, False, False]
    assert not any(t.is_alive() for t in workers._threads)


def test_split_says_what_does_not_add_up():
    outputs = (np.zeros((3, 1)), np.zeros((2, 1)))
    with pytest.raises(ValueError) as refused:
        split(outputs, [1, 2])
    assert str(refused.value) == "outputs of [3, 2] rows for requests of [1, 2] images"


# --- the bounds of a request and every refusal --------------------------------------------------------------------
def test_a_request_holds_one_to_max_batch_size_images():
    async def main():
        batcher = Batcher("m", sums, max_batch_size=3, max_queue_delay_s=0.0, max_queue_size=6)
        batcher.start()
        for n in (0, 4):
            with pytest.raises(ValueError) as refused:
                await batcher.submit(image(1.0, n))
            assert str(refused.value) == f"a request holds 1..3 images, got {n}"
        for n in (1, 3):
            result = await batcher.submit(image(2.0, n))
            assert result.batch_size == n and result.outputs[0].tolist() == [8.0] * n
        await batcher.stop(1)

    asyncio.run(main())


def test_refusals_name_the_model_and_why():
    async def main():
        held, batcher, running = await occupied(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2, retry_after_s=7)
        waiting = [asyncio.ensure_future(batcher.submit(image(2.0)))]  # taken into the batch that waits for the slot
        await until(lambda: batcher.pending == 2 and batcher.queued_images == 0)
        waiting += [asyncio.ensure_future(batcher.submit(image(2.0))) for _ in range(2)]  # queued: 2 of 2
        await until(lambda: batcher.pending == 4 and batcher.queued_images == 2)
        with pytest.raises(QueueFull) as full:
            await batcher.submit(image(3.0))
        assert str(full.value.message) == "model m: queue full (2 of 2 images waiting); retry later"
        assert full.value.headers == {"Retry-After": "7"}
        held.release.set()
        await asyncio.gather(running, *waiting)
        stopping = asyncio.ensure_future(batcher.stop(1))
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDown) as closing:
            await batcher.submit(image(1.0))
        assert closing.value.message == "model m is shutting down"
        await stopping

    asyncio.run(main())


def test_the_properties_before_and_after_start():
    async def main():
        batcher = Batcher("props", sums, max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=8, instances=3)
        assert (batcher.started, batcher.running, batcher.abandoned, batcher.unhealthy) == (False, 0, 0, None)
        batcher.start()
        assert batcher.started and batcher.running == 0
        await asyncio.gather(*(batcher.submit(image(1.0)) for _ in range(4)))
        assert batcher.running == 0 and batcher.pending == 0
        await batcher.stop(1)
        assert batcher.abandoned == 0 and batcher.running == 0
        # nothing was still running: stop joined the worker threads
        assert not [t.name for t in threading.enumerate() if t.name.startswith("ort-props_")]

    asyncio.run(main())


def test_the_tasks_are_named_after_the_model_and_stop_ends_them():
    async def main():
        batcher = Batcher("fmnist", sums, max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=2)
        batcher.start()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        names = sorted(task.get_name() for task in tasks)
        await batcher.stop(1)
        ended = [task.done() for task in tasks]  # at once, not a loop turn later
        await batcher.stop(1)  # a second stop is harmless
        return names, ended

    names, ended = asyncio.run(main())
    assert names == ["batcher-fmnist", "batcher-watchdog-fmnist"] and ended == [True, True]


def test_stop_waits_for_the_running_batch_and_returns_as_soon_as_it_ends():
    async def main():
        held, batcher, running = await occupied(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2)
        asyncio.get_running_loop().call_later(0.1, held.release.set)
        started = time.monotonic()
        await batcher.stop()  # the default: up to 30 s
        took = time.monotonic() - started
        return took, await running

    took, result = asyncio.run(main())
    assert 0.1 <= took < 0.8 and result.batch_size == 1


def test_stop_waits_thirty_seconds_by_default():
    import inspect

    assert inspect.signature(Batcher.stop).parameters["timeout_s"].default == 30.0


def test_a_lone_request_on_an_idle_batcher_goes_to_a_worker_before_the_dispatcher_wakes():
    async def main():
        held = Held()
        batcher = Batcher("m", held, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(image(1.0)))
        await asyncio.sleep(0)  # the submit ran up to its wait; the dispatcher has not run since
        assert (batcher.running, batcher.queued_images) == (1, 0)
        second = asyncio.ensure_future(batcher.submit(image(2.0)))
        await asyncio.sleep(0)
        assert (batcher.running, batcher.queued_images) == (1, 1)  # not idle: queued for the dispatcher
        held.release.set()
        await asyncio.gather(first, second)
        await batcher.stop(1)

    asyncio.run(main())


def test_only_a_full_queue_is_swept_on_submit():
    async def main():
        held, batcher, running = await occupied(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2, max_queue_wait_s=1000)  # the watchdog's first sweep is a second away
        aside = asyncio.ensure_future(batcher.submit(image(2.0)))
        await until(lambda: batcher.pending == 2 and batcher.queued_images == 0)
        gone = in_context(batcher, image(5.0), "left", gone=lambda: left)
        left = False
        await until(lambda: batcher.queued_images == 1)
        left = True
        await asyncio.sleep(0.02)  # past the 10 ms between two sweeps
        exactly_full = asyncio.ensure_future(batcher.submit(image(6.0)))  # 1 + 1 of 2: fits, no sweep
        await until(lambda: batcher.queued_images == 2)
        assert not gone.done() and batcher.dropped_gone == 0
        held.release.set()
        await asyncio.gather(running, aside, exactly_full)
        with pytest.raises(ClientGone):
            await gone
        await batcher.stop(1)

    asyncio.run(main())


def test_unhealthy_at_exactly_unready_after_failures_failed_batches():
    batcher = Batcher("m", sums, max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=2, unready_after_failures=3)
    batcher.failed_batches = 2
    assert batcher.unhealthy is None
    batcher.failed_batches = 3
    assert batcher.unhealthy == "model m: the last 3 inference batches failed"
    batcher.failure = "model m: the batch dispatcher stopped (boom)"
    assert batcher.unhealthy == "model m: the batch dispatcher stopped (boom)"


def test_the_defaults_of_a_batcher():
    batcher = Batcher("m", sums, max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=2)
    assert (batcher.instances, batcher.max_queue_wait_s, batcher.unready_after_failures) == (1, 10.0, 5)
    batcher.failed_batches = 4
    assert batcher.unhealthy is None
    batcher.failed_batches = 5
    assert batcher.unhealthy == "model m: the last 5 inference batches failed"


def test_with_a_free_slot_a_batch_waits_max_queue_delay_for_company_and_no_longer():
    async def main():
        held, batcher, first = await occupied(max_batch_size=8, max_queue_delay_s=0.3, max_queue_size=16, instances=2)
        held.entered.clear()
        sent = time.monotonic()
        second = asyncio.ensure_future(batcher.submit(image(2.0)))
        await asyncio.to_thread(held.entered.wait, 30)
        waited = time.monotonic() - sent
        held.release.set()
        await asyncio.gather(first, second)
        await batcher.stop(1)
        return waited, held

    waited, held = asyncio.run(main())
    assert 0.3 <= waited < 2.0
    assert held.batches == [[1.0], [2.0]]


def test_a_full_batch_goes_at_once_without_waiting_the_delay():
    async def main():
        held, batcher, first = await occupied(max_batch_size=3, max_queue_delay_s=2.0, max_queue_size=16, instances=2)
        held.entered.clear()
        sent = time.monotonic()
        full = asyncio.ensure_future(batcher.submit(image(2.0, 3)))  # exactly max_batch_size images
        await asyncio.to_thread(held.entered.wait, 30)
        waited = time.monotonic() - sent
        held.release.set()
        await asyncio.gather(first, full)
        await batcher.stop(1)
        return waited, held

    waited, held = asyncio.run(main())
    assert waited < 1.0 and held.batches == [[1.0], [2.0, 2.0, 2.0]]


# --- what each caller and the observer get --------------------------------------------------------------------------
def test_each_caller_gets_its_rows_its_wait_and_the_batchs_time_and_size():
    seen = []

    def slow(x):
        time.sleep(0.05)
        return sums(x)

    async def main():
        held, batcher, first = await occupied(slow, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8,
                                              observer=lambda images, infer_s, waits: seen.append((images, infer_s, waits)))
        second = asyncio.ensure_future(batcher.submit(image(2.0, 2)))
        third = asyncio.ensure_future(batcher.submit(image(3.0)))
        await until(lambda: batcher.pending == 3 and batcher.queued_images == 0)
        await asyncio.sleep(0.05)  # the two wait at least this long for the slot
        held.release.set()
        a, b, c = await asyncio.gather(first, second, third)
        await batcher.stop(1)
        return a, b, c

    a, b, c = asyncio.run(main())
    assert held_batches(a, b, c)
    assert (a.batch_size, b.batch_size, c.batch_size) == (1, 3, 3)
    assert a.outputs[0].tolist() == [4.0] and b.outputs[0].tolist() == [8.0, 8.0] and c.outputs[0].tolist() == [12.0]
    assert b.outputs[1].shape == (2, 2) and c.outputs[1].tolist() == [[3.0, 3.0]]
    assert 0 <= a.queue_s < 0.05 and b.queue_s >= 0.1 and c.queue_s >= 0.1  # waited for the first batch too
    assert 0.05 <= a.infer_s < 5 and b.infer_s == c.infer_s and 0.05 <= b.infer_s < 5
    assert [(images, len(waits)) for images, _, waits in seen] == [(1, 1), (3, 2)]
    assert seen[1][1] == b.infer_s and seen[1][2] == [b.queue_s, c.queue_s]


def held_batches(*results: BatchSlice) -> bool:
    return all(isinstance(r, BatchSlice) for r in results)


# --- requests nobody waits for ---------------------------------------------------------------------------------------
def test_a_request_past_its_deadline_or_its_queue_wait_is_answered_and_dropped():
    async def main():
        held, batcher, running = await occupied(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=8, max_queue_wait_s=0.2, retry_after_s=4)
        expired = in_context(batcher, image(2.0), "late", deadline=time.monotonic() + 0.05)
        patient = asyncio.ensure_future(batcher.submit(image(3.0)))
        await asyncio.sleep(0.6)  # past both; the watchdog (every 0.2 / 4 s) answers them while the slot is busy
        assert expired.done() and patient.done() and batcher.queued_images == 0
        late_in_queue = in_context(batcher, image(4.0), "late-2", deadline=time.monotonic() + 0.05)
        behind = asyncio.ensure_future(batcher.submit(image(5.0)))  # its queue wait ends later, at 0.2 s
        await until(lambda: batcher.pending == 3 and batcher.queued_images == 2)
        await until(lambda: late_in_queue.done())
        assert batcher.queued_images == 1 and not behind.done()  # the answered one gave its place up
        with pytest.raises(DeadlineExceeded) as late:
            await expired
        assert late.value.message == "the request's deadline passed while its images waited"
        with pytest.raises(QueueTimeout) as waited:
            await patient
        assert waited.value.message == ("model m: waited more than 0.2 s in the batch queue (max_queue_wait_s); "
                                        "retry later")
        assert waited.value.headers == {"Retry-After": "4"}
        with pytest.raises(DeadlineExceeded):
            await late_in_queue
        with pytest.raises(QueueTimeout):
            await behind
        assert batcher.queued_images == 0
        held.release.set()
        await running
        await batcher.stop(5)
        assert held.batches == [[1.0]]  # the dropped requests never ran

    asyncio.run(main())


def test_the_queue_wait_limit_is_exact():
    from service.core.batching import _Request

    async def main():
        batcher = Batcher("m", sums, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2, max_queue_wait_s=0.25)
        loop = asyncio.get_running_loop()
        at = _Request(image(1.0), loop.create_future(), enqueued=100.0)
        assert batcher._wanted(at, 100.25) is True and not at.future.done()  # waited exactly the limit: kept
        past = _Request(image(1.0), loop.create_future(), enqueued=100.0)
        assert batcher._wanted(past, 100.25 + 1e-9) is False
        assert isinstance(past.future.exception(), QueueTimeout)

    asyncio.run(main())


def test_a_client_gone_before_queueing_is_never_queued():
    async def main():
        batcher = Batcher("m", sums, max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=2)
        batcher.start()
        with pytest.raises(ClientGone) as gone:
            await in_context(batcher, image(1.0), gone=lambda: True)
        assert gone.value.message == "the client disconnected before its images were queued"
        assert batcher.dropped_gone == 1 and batcher.pending == 0
        with pytest.raises(ClientGone):
            await in_context(batcher, image(1.0), gone=lambda: True)
        assert batcher.dropped_gone == 2
        assert (await in_context(batcher, image(1.0), gone=lambda: False)).batch_size == 1
        assert batcher.dropped_gone == 2
        await batcher.stop(1)

    asyncio.run(main())


def test_a_full_queue_gives_the_places_of_gone_clients_up_first():
    async def main():
        held, batcher, running = await occupied(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2)
        left = {"flag": False}
        aside = asyncio.ensure_future(batcher.submit(image(2.0)))  # taken into the forming batch
        await until(lambda: batcher.pending == 2 and batcher.queued_images == 0)
        leaving = [in_context(batcher, image(5.0), f"q{i}", gone=lambda: left["flag"]) for i in range(2)]
        await until(lambda: batcher.queued_images == 2)
        left["flag"] = True
        await asyncio.sleep(0.02)  # the sweep runs at most every 10 ms
        newcomer = asyncio.ensure_future(batcher.submit(image(6.0)))  # refused without the sweep
        for request in leaving:
            with pytest.raises(ClientGone) as gone:
                await request
            assert gone.value.message == "the client disconnected before its images ran"
        assert batcher.dropped_gone == 2
        held.release.set()
        await asyncio.gather(running, aside, newcomer)
        assert held.batches == [[1.0], [2.0], [6.0]]
        await batcher.stop(1)

    asyncio.run(main())


# --- failures ----------------------------------------------------------------------------------------------------------
def test_a_service_error_from_the_runner_reaches_every_caller_as_it_is_without_a_retry():
    calls = []

    def refuses(x):
        calls.append(len(x))
        time.sleep(0.02)
        raise Unavailable("the runtime said no")

    async def main():
        batcher = Batcher("m", refuses, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(image(1.0)) for _ in range(3)), return_exceptions=True)
        await batcher.stop(1)
        return results, batcher

    results, batcher = asyncio.run(main())
    assert [r.message for r in results] == ["the runtime said no"] * 3 and all(isinstance(r, Unavailable) for r in results)
    assert calls == [1, 2] and batcher.failed_batches == 2  # the lone first, then the other two together: never alone


def test_a_failed_batch_retried_alone_counts_each_request_and_observes_each(caplog):
    seen = []

    def picky(x):
        time.sleep(0.01)
        if (x < 0).any():
            raise RuntimeError("negative\n  at node 12\n  the details the log has")
        return sums(x)

    async def main():
        held, batcher, first = await occupied(picky, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8,
                                              observer=lambda images, infer_s, waits: seen.append((images, infer_s, waits)))
        good = asyncio.ensure_future(batcher.submit(image(2.0, 2)))
        bad = in_context(batcher, image(-1.0), "bad-1")
        await until(lambda: batcher.pending == 3 and batcher.queued_images == 0)
        held.release.set()
        with caplog.at_level(logging.WARNING, logger="service.core.batching"):
            results = await asyncio.gather(first, good, bad, return_exceptions=True)
        await batcher.stop(1)
        return results, batcher, held

    (a, b, c), batcher, held = asyncio.run(main())
    assert held.batches == [[1.0], [2.0, 2.0, -1.0], [2.0, 2.0], [-1.0]]
    assert set(held.threads) == {"ort-m_0"}  # the retries too run on the model's own worker
    assert a.batch_size == 1 and b.batch_size == 2 and b.outputs[0].tolist() == [8.0, 8.0]  # alone: its own size
    assert isinstance(c, InferenceFailed) and c.message == (
        "model m: inference failed for this request; the server log has the details under its request id")
    assert [(images, len(waits)) for images, _, waits in seen] == [(1, 1), (2, 1)]
    assert seen[1][1] == b.infer_s >= 0.01 and seen[1][2] == [b.queue_s] and 0 <= b.queue_s < 5
    assert batcher.failed_batches == 0  # one of the retried requests succeeded
    assert batcher.abandoned == 0 and batcher.running == 0  # the retried batch's slot was given back
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["model m: a batch of 2 requests failed (negative); retrying each alone"]
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failed] == ["model m: inference failed for a request of 1 image(s)"]
    assert failed[0].request_id == "bad-1" and failed[0].exc_info[0] is RuntimeError


def test_a_retry_where_every_request_fails_counts_one_failed_batch():
    def never(x):
        time.sleep(0.01)
        raise RuntimeError("always")

    async def main():
        held, batcher, first = await occupied(never, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
        rest = [asyncio.ensure_future(batcher.submit(image(2.0))) for _ in range(2)]
        await until(lambda: batcher.pending == 3 and batcher.queued_images == 0)
        held.release.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await batcher.stop(1)
        return results, batcher, held

    results, batcher, held = asyncio.run(main())
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert batcher.failed_batches == 2  # the lone first batch, then the retried pair as one
    assert held.batches == [[1.0], [2.0, 2.0], [2.0], [2.0]]  # a lone request is not run again; the pair is, alone


def test_requests_of_different_shapes_in_one_batch_are_run_alone():
    async def main():
        held, batcher, first = await occupied(max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
        square = asyncio.ensure_future(batcher.submit(image(2.0)))
        wide = asyncio.ensure_future(batcher.submit(np.full((1, 2, 3), 3.0, np.float32)))
        await until(lambda: batcher.pending == 3 and batcher.queued_images == 0)
        held.release.set()
        results = await asyncio.gather(first, square, wide)
        await batcher.stop(1)
        return results, held

    (a, b, c), held = asyncio.run(main())
    assert b.outputs[0].tolist() == [8.0] and c.outputs[0].tolist() == [18.0]
    assert held.batches == [[1.0], [2.0], [3.0]]  # merge refused the pair: each alone


def test_a_batch_that_fails_while_stopping_is_not_retried():
    lone_gate, pair_gate, pair_in, batches = threading.Event(), threading.Event(), threading.Event(), []

    def never(x):
        batches.append(len(x))
        if len(x) > 1:
            pair_in.set()
            assert pair_gate.wait(30)
        else:
            assert lone_gate.wait(30)
        raise RuntimeError("always")

    async def main():
        batcher = Batcher("m", never, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(image(1.0)))
        await until(lambda: batches == [1])
        pair = [asyncio.ensure_future(batcher.submit(image(2.0))) for _ in range(2)]
        await until(lambda: batcher.pending == 3 and batcher.queued_images == 0)
        lone_gate.set()
        await asyncio.to_thread(pair_in.wait, 30)  # the pair is running
        stopping = asyncio.ensure_future(batcher.stop(30))
        await asyncio.sleep(0.01)
        pair_gate.set()
        await stopping
        return await asyncio.gather(first, *pair, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, InferenceFailed) for r in results), results
    assert batches == [1, 2]  # not run again one by one


def test_outputs_with_the_wrong_number_of_rows_fail_every_request_of_the_batch(caplog):
    def one_row(x):
        time.sleep(0.01)
        return (x.reshape(len(x), -1).sum(axis=1)[:1],)  # a model that drops the batch axis

    async def main():
        held, batcher, first = await occupied(one_row, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
        rest = [in_context(batcher, image(2.0), f"r{i}") for i in range(2)]
        await until(lambda: batcher.pending == 3 and batcher.queued_images == 0)
        held.release.set()
        with caplog.at_level(logging.ERROR, logger="service.core.batching"):
            results = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), 10)
        await batcher.stop(1)
        return results

    first, *rest = asyncio.run(main())
    assert first.batch_size == 1  # alone, its one row is its answer
    assert all(isinstance(r, InferenceFailed) for r in rest), rest
    delivered = [r for r in caplog.records if r.getMessage() == "model m: cannot deliver a batch's outputs"]
    assert len(delivered) == 1 and str(delivered[0].exc_info[1]) == "outputs of [1] rows for requests of [1, 1] images"
    failed = [r for r in caplog.records if r.getMessage() == "model m: inference failed for a request of 1 image(s)"]
    assert sorted(r.request_id for r in failed) == ["r0", "r1"] and all(r.exc_info[0] is ValueError for r in failed)


class Interrupted(BaseException):
    """Not an Exception: what a runner interrupted in its thread raises."""


def test_a_retry_that_dies_outright_still_answers_every_request(caplog):
    def interrupted(x):
        time.sleep(0.01)
        raise Interrupted("stop")

    async def main():
        held, batcher, first = await occupied(interrupted, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
        pair = [asyncio.ensure_future(batcher.submit(image(2.0))) for _ in range(2)]
        await until(lambda: batcher.pending == 3 and batcher.queued_images == 0)
        held.release.set()
        with caplog.at_level(logging.WARNING, logger="service.core.batching"):
            results = await asyncio.wait_for(asyncio.gather(first, *pair, return_exceptions=True), 10)
        await batcher.stop(1)
        return results, batcher

    results, batcher = asyncio.run(main())
    assert all(isinstance(r, InferenceFailed) for r in results), results
    assert batcher.failed_batches == 2 and batcher.running == 0
    assert not any("cannot deliver" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("retried", [False, True])
def test_outputs_that_cannot_be_delivered_fail_the_rest_and_are_logged(caplog, retried):
    def observer(images, infer_s, waits):
        raise RuntimeError("observer broke")

    def run(x):
        time.sleep(0.01)
        if retried and len(x) > 1:
            raise RuntimeError("batch refused")
        return sums(x)

    async def main():
        held, batcher, first = await occupied(run, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8, observer=observer)
        pair = [asyncio.ensure_future(batcher.submit(image(2.0))) for _ in range(2)]
        await until(lambda: batcher.pending == 3 and batcher.queued_images == 0)
        held.release.set()
        with caplog.at_level(logging.ERROR, logger="service.core.batching"):
            results = await asyncio.wait_for(asyncio.gather(first, *pair, return_exceptions=True), 10)
        await batcher.stop(1)
        return results, batcher

    (a, b, c), batcher = asyncio.run(main())
    assert a.batch_size == 1  # answered before its observer call failed
    if retried:  # the first retried request was answered before the observer failed; the second was not
        assert b.batch_size == 1 and isinstance(c, InferenceFailed)
        message = "model m: cannot deliver a retried batch's outputs"
        failed = [r for r in caplog.records if r.getMessage() == "model m: inference failed for a request of 1 image(s)"]
        assert len(failed) == 1 and str(failed[0].exc_info[1]) == "observer broke"  # c's log line says why
    else:  # both were answered before the observer failed
        assert b.batch_size == c.batch_size == 2
        message = "model m: cannot deliver a batch's outputs"
    logged = [r for r in caplog.records if r.getMessage() == message]
    assert len(logged) >= 1 and logged[-1].exc_info[0] is RuntimeError and str(logged[-1].exc_info[1]) == "observer broke"
    assert batcher.running == 0


def test_the_canary_is_one_image_of_zeros_in_no_request_context(caplog):
    broken = {"canaries": 3}  # the first canaries fail too

    def run(x):
        if (x == 7).any():
            raise RuntimeError("bad input")
        if broken["canaries"]:
            broken["canaries"] -= 1
            raise RuntimeError("still broken")
        return sums(x)

    async def main():
        held = Held(run)
        held.release.set()
        batcher = Batcher("m", held, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8, max_queue_wait_s=0.2,
                          unready_after_failures=1)
        # started inside a request whose client has gone: the canary must not inherit that request
        request_context.current.set(request_context.RequestContext("starter", client_gone=lambda: True))
        batcher.start()
        request_context.current.set(None)
        with pytest.raises(InferenceFailed):
            await batcher.submit(np.full((3, 2, 2), 7.0, np.float32))
        assert batcher.unhealthy == "model m: the last 1 inference batches failed"
        await until(lambda: batcher.unhealthy is None)  # a canary ran and cleared it
        await batcher.stop(1)
        return held, batcher

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        held, batcher = asyncio.run(main())
        import gc

        gc.collect()  # a failed canary whose error nobody read would be reported now
    assert held.batches[0] == [7.0, 7.0, 7.0] and held.batches[1:] == [[0.0]] * 4 and batcher.dropped_gone == 0
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_the_watchdog_sweeps_at_least_every_second():
    async def main():
        held, batcher, running = await occupied(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=8, max_queue_wait_s=1000)
        aside = asyncio.ensure_future(batcher.submit(image(2.0)))
        await until(lambda: batcher.pending == 2 and batcher.queued_images == 0)
        left = {"flag": False}
        gone = in_context(batcher, image(3.0), "left", gone=lambda: left["flag"])
        await until(lambda: batcher.queued_images == 1)
        left["flag"] = True
        started = time.monotonic()
        with pytest.raises(ClientGone):
            await gone
        took = time.monotonic() - started
        held.release.set()
        await asyncio.gather(running, aside)
        await batcher.stop(1)
        return took

    assert asyncio.run(main()) < 1.6  # the tick is min(1 s, max_queue_wait_s / 4)


def test_a_dispatcher_that_dies_while_stopping_is_not_a_failure(caplog):
    async def main():
        held, batcher, running = await occupied(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=8)
        queued = asyncio.ensure_future(batcher.submit(image(2.0)))
        await until(lambda: batcher.pending == 2 and batcher.queued_images == 0)
        stopping = asyncio.ensure_future(batcher.stop(0.3))
        await asyncio.sleep(0.01)

        def broken(*args):
            raise KeyError("lost while stopping")

        batcher._sleep = broken
        batcher._wake.set()
        with caplog.at_level(logging.CRITICAL, logger="service.core.batching"):
            await stopping
        held.release.set()
        await asyncio.gather(running, queued, return_exceptions=True)
        return batcher

    batcher = asyncio.run(main())
    assert batcher.failure is None
    assert [r for r in caplog.records if r.levelno == logging.CRITICAL] == []


# --- stop and a dead dispatcher ------------------------------------------------------------------------------------------
def test_stop_answers_what_is_left_and_logs_a_batch_still_running(caplog):
    async def main():
        held, batcher, running = await occupied(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=8)
        queued = [asyncio.ensure_future(batcher.submit(image(2.0))) for _ in range(2)]
        await until(lambda: batcher.pending == 3)
        with caplog.at_level(logging.ERROR, logger="service.core.batching"):
            await batcher.stop(0.05)
        assert batcher.abandoned == 1 and batcher.queued_images == 0
        for request in queued:
            with pytest.raises(ShuttingDown) as info:
                await request
            assert info.value.message == "model m stopped before this request ran"
        with pytest.raises(ShuttingDown) as info:
            await running
        assert info.value.message == "model m stopped before this request finished"
        held.release.set()
        return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]

    assert asyncio.run(main()) == ["model m: a batch of 1 request(s) still ran after 0.1 s; answering them ShuttingDown"]


def test_a_dead_dispatcher_says_why_and_refuses_every_request(caplog):
    async def main():
        held, batcher, running = await occupied(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=8)
        queued = asyncio.ensure_future(batcher.submit(image(2.0)))
        more = asyncio.ensure_future(batcher.submit(image(3.0)))
        await until(lambda: batcher.pending == 3)

        def broken(*args):  # a bug in the dispatcher's next step
            raise KeyError("lost")

        batcher._sleep = broken
        batcher._wake.set()
        with caplog.at_level(logging.CRITICAL, logger="service.core.batching"):
            for request in (queued, more):
                with pytest.raises(Unavailable) as info:
                    await request
                assert info.value.message == ("model m cannot run requests now (its batcher stopped); "
                                              "retry on another replica")
        assert batcher.failure == "model m: the batch dispatcher stopped (KeyError('lost'))"
        assert batcher.unhealthy == batcher.failure and batcher.queued_images == 0
        with pytest.raises(Unavailable) as refused:
            await batcher.submit(image(4.0))
        assert refused.value.message == ("model m cannot run requests now (its batcher stopped); "
                                         "retry on another replica")
        held.release.set()
        await running
        await batcher.stop(1)
        critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert critical and all(r.exc_info[0] is KeyError for r in critical)
        return [r.getMessage() for r in critical]

    assert asyncio.run(main()) == [
        "model m: the batch dispatcher stopped (KeyError('lost')); answering every waiting request 503, readiness is false"]
