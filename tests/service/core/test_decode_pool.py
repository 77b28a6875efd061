"""The decode pool's places: taken before any work starts, given back exactly when the work is over (done, failed,
or cancelled before a thread took it), whatever the caller does meanwhile. A place lost for good would make the
pool answer 503 decode_busy forever; a place given back while its thread still decodes would let more work in
than the pool admits."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.core.decodeproc import Processes
from service.core.decoding import Pool
from service.core.errors import ClientGone, DecodeBusy
from tests.photo_bundles import spec


def gate() -> tuple[threading.Event, threading.Event, callable]:
    """A job that says it started, then waits for the test to let it finish."""
    started, release = threading.Event(), threading.Event()

    def job(value):
        started.set()
        release.wait(10)
        return value

    return started, release, job


async def settle(pool: Pool, jobs: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while pool.jobs != jobs:
        assert asyncio.get_running_loop().time() < deadline, f"the pool holds {pool.jobs} places, expected {jobs}"
        await asyncio.sleep(0.01)


def test_a_caller_cancelled_before_its_jobs_start_gives_every_place_back():
    async def main():
        pool = Pool(2, 1, 1)  # 3 places
        caller = asyncio.ensure_future(pool.map(lambda x: x, [1, 2, 3]))
        await asyncio.sleep(0)  # map has reserved its 3 places and handed the jobs over
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await settle(pool, 0)
        assert await pool.map(lambda x: x * 2, [1, 2, 3]) == [2, 4, 6]  # the whole pool is usable again
        assert pool.jobs == 0

    asyncio.run(main())


def test_a_caller_that_leaves_mid_decode_holds_its_place_until_the_thread_is_free():
    async def main():
        pool = Pool(1, 0, 1)  # one place: the one thread
        started, release, job = gate()
        caller = asyncio.ensure_future(pool.run(job, "late"))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert pool.jobs == 1  # the thread still decodes: no second job gets in
        with pytest.raises(DecodeBusy, match=r"\(1 jobs for 1 places\)"):
            await pool.run(lambda: None)
        release.set()
        await settle(pool, 0)
        assert await pool.run(lambda: "next") == "next"

    asyncio.run(main())


def test_a_failing_job_gives_its_place_back_and_its_exception_to_the_caller():
    def fail(value):
        raise ValueError(f"bad {value}")

    async def main():
        pool = Pool(2, 0, 1)
        results = await pool.map(fail, [1, 2])
        assert [str(r) for r in results] == ["bad 1", "bad 2"] and all(isinstance(r, ValueError) for r in results)
        with pytest.raises(ValueError, match="bad 3"):
            await pool.run(fail, 3)
        await settle(pool, 0)

    asyncio.run(main())


def test_places_are_counted_while_jobs_run_and_a_full_pool_refuses_at_once():
    async def main():
        pool = Pool(1, 1, 7)  # one thread, one waiting place
        started, release, job = gate()
        running = asyncio.ensure_future(pool.map(job, ["a", "b"]))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        assert pool.jobs == 2
        with pytest.raises(DecodeBusy) as refused:
            pool.reserve(1)
        assert refused.value.headers == {"Retry-After": "7"} and pool.jobs == 2
        release.set()
        assert await running == ["a", "b"]
        await settle(pool, 0)

    asyncio.run(main())


def test_a_job_whose_client_already_left_touches_no_worker_process():
    """Clients that close together (a load balancer's retry, a load test's end) leave their jobs queued; each must
    end at once when a thread takes it, not start a decode only to kill and replace the worker process."""
    processes = Processes(1)
    try:
        with pytest.raises(ClientGone, match="before its image was decoded"):
            processes.decode(b"not even an image", spec(64), 10_000, 10.0, 2.0, lambda: True)
        assert processes.killed == 0 and not processes._all  # no worker started, none killed
    finally:
        processes.shutdown()


def test_jobs_a_shut_down_pool_cannot_take_give_their_places_back():
    async def main():
        pool = Pool(2, 2, 1)
        pool.shutdown()
        with pytest.raises(RuntimeError, match="shutdown"):
            await pool.map(lambda x: x, [1, 2, 3])
        with pytest.raises(RuntimeError, match="shutdown"):
            await pool.run(lambda: None)
        assert pool.jobs == 0

    asyncio.run(main())
