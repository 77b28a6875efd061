"""The batcher's failure containment: disconnected clients and expired requests are dropped before a
batch forms, a failing batch is retried one request at a time with a generic message to the client,
consecutive failures make it unhealthy until a canary succeeds, and a dead dispatcher answers every
waiter 503 at once."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from service.core import context as request_context
from service.core.batching import Batcher
from service.core.errors import ClientGone, InferenceFailed, QueueTimeout, Unavailable


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the batcher"
        await asyncio.sleep(0.001)


class Runner:
    """Sums each image; an image holding ``poison`` raises; blocks while ``hold`` is clear."""

    def __init__(self, poison: float = -1.0) -> None:
        self.poison = poison
        self.calls: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.fail_all = False

    def __call__(self, x: np.ndarray):
        self.calls.append(len(x))
        self.entered.set()
        self.hold.wait(30)
        if self.fail_all or (x == self.poison).any():
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : secret internal detail")
        return (x.reshape(len(x), -1).sum(axis=1, keepdims=True),)


def image(value: float) -> np.ndarray:
    return np.full((1, 2, 2), value, np.float32)


async def submit_as(batcher: Batcher, x: np.ndarray, request_id: str, gone=None):
    request_context.current.set(request_context.RequestContext(request_id, client_gone=gone))
    return await batcher.submit(x)


def test_one_bad_input_in_a_batch_fails_only_itself_with_a_generic_message(caplog):
    async def main():
        runner = Runner()
        batcher = Batcher("m", runner, max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=16)
        batcher.start()
        runner.hold.clear()  # the first request occupies the slot while the next three queue up
        first = asyncio.ensure_future(submit_as(batcher, image(1), "r0"))
        await until(runner.entered.is_set)
        others = [asyncio.ensure_future(submit_as(batcher, image(v), f"r{i + 1}"))
                  for i, v in enumerate([2.0, -1.0, 3.0])]
        await until(lambda: batcher.pending == 4)
        runner.hold.set()
        results = await asyncio.gather(first, *others, return_exceptions=True)
        await batcher.stop(5)
        return runner, batcher, results

    with caplog.at_level(logging.ERROR, logger="service.core.batching"):
        runner, batcher, results = asyncio.run(main())
    assert runner.calls == [1, 3, 1, 1, 1]  # the batch of 3 failed, then each alone
    assert [float(r.outputs[0][0, 0]) for r in (results[0], results[1], results[3])] == [4.0, 8.0, 12.0]
    bad = results[2]
    assert isinstance(bad, InferenceFailed)
    assert "secret internal detail" not in bad.message and "request id" in bad.message
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == "r2"]
    assert logged and "secret internal detail" in logged[0].exc_text
    assert batcher.failed_batches == 0  # the batch had successes


def test_disconnected_and_expired_requests_are_dropped_before_a_batch_forms():
    async def main():
        runner = Runner()
        batcher = Batcher("m", runner, max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=16, max_queue_wait_s=0.3)
        batcher.start()
        runner.hold.clear()
        first = asyncio.ensure_future(submit_as(batcher, image(1), "a"))
        await until(runner.entered.is_set)
        gone = [False]
        lost = asyncio.ensure_future(submit_as(batcher, np.full((3, 2, 2), 2.0, np.float32), "b", lambda: gone[0]))
        kept = asyncio.ensure_future(submit_as(batcher, image(3), "c"))
        await until(lambda: batcher.pending == 3)
        gone[0] = True  # its client hangs up while it waits
        await asyncio.sleep(0.05)
        runner.hold.set()
        results = await asyncio.gather(first, lost, kept, return_exceptions=True)
        assert runner.calls == [1, 1]  # the lost request's 3 images never ran
        assert isinstance(results[1], ClientGone) and batcher.dropped_gone == 1
        # expiry: while the slot is held past max_queue_wait_s, the watchdog answers the waiter 503
        runner.hold.clear()
        runner.entered.clear()
        blocker = asyncio.ensure_future(submit_as(batcher, image(1), "d"))
        await until(runner.entered.is_set)
        start = time.monotonic()
        waiting = await asyncio.gather(submit_as(batcher, image(1), "e"), return_exceptions=True)
        waited = time.monotonic() - start
        runner.hold.set()
        await blocker
        await batcher.stop(5)
        return waiting[0], waited, batcher

    expired, waited, batcher = asyncio.run(main())
    assert isinstance(expired, QueueTimeout) and expired.status == 503 and expired.headers["Retry-After"] == "1"
    assert 0.3 <= waited < 1.5
    assert batcher.queued_images == 0


def test_consecutive_failures_make_it_unhealthy_until_a_canary_succeeds():
    async def main():
        runner = Runner()
        batcher = Batcher("m", runner, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8,
                          max_queue_wait_s=0.4, unready_after_failures=3)
        batcher.start()
        runner.fail_all = True
        for _ in range(3):
            with pytest.raises(InferenceFailed):
                await submit_as(batcher, image(1), "x")
        assert batcher.unhealthy and "last 3 inference batches failed" in batcher.unhealthy
        runner.fail_all = False  # the cause goes away: the watchdog's canary notices
        await until(lambda: batcher.unhealthy is None, timeout=5)
        result = await submit_as(batcher, image(2), "y")
        await batcher.stop(5)
        return result

    assert float(asyncio.run(main()).outputs[0][0, 0]) == 8.0


def test_a_dead_dispatcher_answers_every_waiter_503_at_once(caplog):
    async def main():
        runner = Runner()
        batcher = Batcher("m", runner, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
        batcher.start()
        runner.hold.clear()
        first = asyncio.ensure_future(submit_as(batcher, image(1), "a"))
        await until(runner.entered.is_set)

        def broken(*args):
            raise RuntimeError("a bug in the dispatcher")
        batcher._take = broken  # the dispatcher's next step raises
        waiter = asyncio.ensure_future(submit_as(batcher, image(1), "b"))
        runner.hold.set()
        start = time.monotonic()
        results = await asyncio.gather(first, waiter, return_exceptions=True)
        took = time.monotonic() - start
        with pytest.raises(Unavailable):
            await submit_as(batcher, image(1), "c")
        await batcher.stop(5)
        return results, took, batcher

    with caplog.at_level(logging.CRITICAL, logger="service.core.batching"):
        results, took, batcher = asyncio.run(main())
    assert float(results[0].outputs[0][0, 0]) == 4.0  # the running batch still answers
    assert isinstance(results[1], Unavailable) and results[1].status == 503 and took < 1.0
    assert "dispatcher stopped" in batcher.unhealthy
    assert any("a bug in the dispatcher" in r.getMessage() for r in caplog.records)
