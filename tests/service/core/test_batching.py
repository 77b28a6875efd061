"""The batcher on its own: merge/split, coalescing, the idle fast path, the queue bound, errors, stop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.core.batching import Batcher, merge, split
from service.core.errors import InferenceFailed, QueueFull, ShuttingDown


def test_merge_and_split_are_inverse():
    parts = [np.full((n, 2), i, np.float32) for i, n in enumerate([1, 3, 2])]
    merged = merge(parts)
    assert merged.shape == (6, 2)
    assert merge(parts[:1]) is parts[0]  # a lone request is not copied
    outputs = (merged * 10, merged[:, :1])
    pieces = split(outputs, [1, 3, 2])
    for i, (a, b) in enumerate(pieces):
        assert a.shape == (parts[i].shape[0], 2) and (a == 10 * i).all() and (b == i).all()
    with pytest.raises(ValueError):
        split(outputs, [1, 1])
    (alone,) = split(outputs, [6])
    assert all(a is b for a, b in zip(alone, outputs, strict=True))  # a lone request's outputs are not sliced
    with pytest.raises(ValueError):
        split(outputs, [5])


class Gate:
    """A runner that blocks until released, recording the batch sizes it saw."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, x: np.ndarray):
        self.sizes.append(len(x))
        self.entered.set()
        self.open.wait(60)
        return x.sum(axis=(1, 2)), x[:, :1, 0]


def run(coro):
    return asyncio.run(coro)


async def until(condition, timeout: float = 10.0) -> None:
    """Yield to the event loop until ``condition()`` holds (no fixed sleeps: the state decides)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the batcher"
        await asyncio.sleep(0.001)


async def busy_batcher(first: np.ndarray, **limits) -> tuple[Gate, Batcher, asyncio.Future]:
    """A started batcher on a closed Gate, its runner already busy with the request ``first``."""
    gate = Gate()
    batcher = Batcher("m", gate, **limits)
    batcher.start()
    running = asyncio.ensure_future(batcher.submit(first))
    await asyncio.to_thread(gate.entered.wait, 30)
    return gate, batcher, running


def test_lone_request_runs_at_once_and_later_ones_coalesce():
    async def main():
        # dispatched without waiting the 60 s delay
        gate, batcher, first = await busy_batcher(np.ones((1, 2, 2), np.float32), max_batch_size=8,
                                                  max_queue_delay_s=60.0, max_queue_size=64)
        assert gate.sizes == [1]
        rest = [asyncio.ensure_future(batcher.submit(np.full((n, 2, 2), n, np.float32))) for n in (2, 3, 1, 4)]
        await until(lambda: batcher.pending == 5 and batcher.queued_images < 10)  # the dispatcher has taken some
        assert batcher.queued_images == 4  # 2+3+1 already form the next batch; the 4 waits behind it
        gate.open.set()
        results = await asyncio.gather(first, *rest)
        # 2+3+1 fill 6 of 8; the request of 4 does not fit and goes in the next batch
        assert gate.sizes == [1, 6, 4]
        for n, result in zip((1, 2, 3, 1, 4), results, strict=True):
            sums, _ = result.outputs
            assert sums.shape == (n,) and (sums == 4 * n).all()  # each request got its own rows back
            assert result.queue_s >= 0 and result.infer_s >= 0
        assert results[1].batch_size == 6 and results[4].batch_size == 4
        # idle again: the next lone request goes straight to a worker, and nothing is left counted as queued
        gate.sizes.clear()
        again = await batcher.submit(np.full((1, 2, 2), 5, np.float32))
        assert gate.sizes == [1] and again.batch_size == 1 and (again.outputs[0] == 20).all()
        assert (batcher.pending, batcher.queued_images, batcher.running) == (0, 0, 0)
        await batcher.stop(1)

    run(main())


def test_queue_full_is_refused_at_once_with_retry_after():
    async def main():
        gate, batcher, running = await busy_batcher(np.zeros((2, 1, 1), np.float32), max_batch_size=2,
                                                    max_queue_delay_s=0.0, max_queue_size=2, retry_after_s=3)
        waiting = asyncio.ensure_future(batcher.submit(np.zeros((2, 1, 1), np.float32)))  # taken, waits for the slot
        await until(lambda: batcher.pending == 2 and batcher.queued_images == 0)
        queued = asyncio.ensure_future(batcher.submit(np.zeros((2, 1, 1), np.float32)))  # fills the queue
        await until(lambda: batcher.pending == 3)
        assert batcher.queued_images == 2
        with pytest.raises(QueueFull) as info:
            await batcher.submit(np.zeros((1, 1, 1), np.float32))
        assert info.value.headers == {"Retry-After": "3"} and info.value.status == 503
        gate.open.set()
        await asyncio.gather(running, waiting, queued)
        assert batcher.queued_images == 0 and batcher.pending == 0
        await batcher.stop(1)

    run(main())


def test_errors_reach_every_request_of_the_batch():
    def broken(x):
        time.sleep(0.02)
        raise RuntimeError("kaboom")

    async def main():
        batcher = Batcher("m", broken, max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=8)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(np.zeros((1, 1), np.float32)) for _ in range(4)),
                                       return_exceptions=True)
        # the client's message is generic (the details are logged under its request id)
        assert all(isinstance(r, InferenceFailed) and "kaboom" not in str(r) and "inference failed" in str(r)
                   for r in results), results
        assert batcher.pending == 0 and batcher.running == 0
        await batcher.stop(1)

    run(main())


def test_cancelled_request_is_skipped_and_stop_drains():
    async def main():
        gate, batcher, first = await busy_batcher(np.zeros((1, 1, 1), np.float32), max_batch_size=4,
                                                  max_queue_delay_s=0.0, max_queue_size=16)
        gone = asyncio.ensure_future(batcher.submit(np.zeros((3, 1, 1), np.float32)))
        kept = asyncio.ensure_future(batcher.submit(np.zeros((2, 1, 1), np.float32)))
        await until(lambda: batcher.pending == 3)
        gone.cancel()
        stopping = asyncio.ensure_future(batcher.stop(30))
        await asyncio.sleep(0)  # stop refuses new requests before its first await
        with pytest.raises(ShuttingDown):
            await batcher.submit(np.zeros((1, 1, 1), np.float32))
        gate.open.set()
        await stopping
        assert (await first).batch_size == 1 and (await kept).batch_size == 2  # queued work finished
        assert gate.sizes == [1, 2]

    run(main())


def test_delay_applies_only_with_a_free_slot_while_another_runs():
    async def main():
        # idle runtime: no delay
        gate, batcher, first = await busy_batcher(np.zeros((1, 1, 1), np.float32), max_batch_size=8,
                                                  max_queue_delay_s=2.0, max_queue_size=16, instances=2)
        gate.entered.clear()
        second = asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 1), np.float32)))
        await until(lambda: batcher.pending == 2 and batcher.queued_images == 0)  # taken into the next batch
        assert gate.sizes == [1]  # a slot is free but the other runs: the batch waits for company
        third = asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 1), np.float32)))
        await asyncio.to_thread(gate.entered.wait, 30)  # the delay expires
        assert gate.sizes == [1, 2]  # and the batch took the third request along
        gate.open.set()
        await asyncio.gather(first, second, third)
        await batcher.stop(1)

    run(main())


def test_real_runtime_batches_match_singles(bundle_repo):
    from rbn.contract.bundle import read_meta
    from service.core.repository import Bundle
    from service.core.runtime import ModelRuntime

    meta = read_meta(bundle_repo / "test-resnet20-rbn")
    runtime = ModelRuntime(meta, Bundle(meta, bundle_repo / meta.name).onnx_file, "cpu", 1)
    x = np.random.default_rng(0).standard_normal((12, 1, 28, 28)).astype(np.float32)

    async def main():
        batcher = Batcher("m", runtime.run, max_batch_size=12, max_queue_delay_s=0.01, max_queue_size=64)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(x[i : i + 1]) for i in range(12)))
        await batcher.stop(1)
        return results

    results = run(main())
    assert max(r.batch_size for r in results) > 1
    for i, r in enumerate(results):
        logits, stats = runtime.run(x[i : i + 1])[:2]
        np.testing.assert_allclose(r.outputs[0], logits, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r.outputs[1], stats, rtol=1e-4, atol=1e-5)


def test_stop_is_bounded_when_an_inference_hangs():
    """A batch that never returns must not hold stop (or the interpreter's exit) past the timeout:
    its requests get ShuttingDown, the worker thread is abandoned."""
    release = threading.Event()
    entered = threading.Event()

    def hangs(x):
        entered.set()
        release.wait(120)  # "forever" for the test; released at the end so the thread ends
        return x.sum(axis=(1, 2)), x[:, :1, 0]

    outcome: dict = {}

    async def main():
        batcher = Batcher("m", hangs, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
        batcher.start()
        stuck = asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 1), np.float32)))
        await asyncio.to_thread(entered.wait, 10)
        queued = asyncio.ensure_future(batcher.submit(np.zeros((2, 1, 1), np.float32)))
        started = time.monotonic()
        await batcher.stop(0.3)
        outcome["stop_s"] = time.monotonic() - started
        outcome["results"] = await asyncio.gather(stuck, queued, return_exceptions=True)
        outcome["workers"] = [t for t in threading.enumerate() if t.name.startswith("ort-m")]

    # In a thread: a stop that blocks the event loop cannot be timed out from inside that loop.
    runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    runner.start()
    runner.join(20)
    try:
        assert not runner.is_alive(), "Batcher.stop blocked on the hung inference"
        assert outcome["stop_s"] < 5
        assert all(isinstance(r, ShuttingDown) for r in outcome["results"]), outcome["results"]
        assert outcome["workers"] and all(t.daemon for t in outcome["workers"])  # cannot block the exit
    finally:
        release.set()
