"""The backstop behind the per-test timeout: no test can stall a run, even one stuck where the timeout cannot reach.

pyproject.toml sets pytest-timeout's ``timeout`` (seconds, per test, set-up and teardown included) with the
"signal" method: at the deadline SIGALRM makes the test fail with its traceback and the run goes on. A
signal handler runs only when the main thread gets back to Python bytecode, so a test blocked in C code
that never returns (a native call holding the GIL, a signal masked by a library) would ignore it. For those,
``hang_grace`` seconds after the timeout this plugin ends the whole run: first, while the GIL is free,
pytest-timeout's "thread" report (captured output, every thread's stack), then, if even that cannot run,
faulthandler's C-level dump of every thread's stack, from a watchdog thread that needs no GIL; exit status 1.

Loaded by tests/conftest.py (``pytest_plugins``); ``pytest -p hang_guard`` with ``tests/`` on the path loads it
for any other test tree (tests/test_hang_guard.py does that).
"""

from __future__ import annotations

import faulthandler
import os
import threading

import pytest
import pytest_timeout

DEFAULT_GRACE_S = 120.0
FAULTHANDLER_EXTRA_S = 30.0  # after the thread report had its chance (at most hang_grace more)
_STDERR = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("hang_grace", "seconds after a test's timeout before hang_guard ends the run (default 120)",
                  default=str(DEFAULT_GRACE_S))


def pytest_configure(config: pytest.Config) -> None:
    # fd 2 as it is now, before output capture swaps it: where faulthandler writes if the run must end
    config.stash[_STDERR] = os.dup(2)


def pytest_unconfigure(config: pytest.Config) -> None:
    fd = config.stash.get(_STDERR, None)
    if fd is not None:
        os.close(fd)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item):
    settings = pytest_timeout._get_item_settings(item)  # the marker's, else the configured timeout
    if not settings.timeout or settings.timeout <= 0:
        yield
        return
    grace = float(item.config.getini("hang_grace"))
    after = settings.timeout + grace
    timer = threading.Timer(after, pytest_timeout.timeout_timer, (item, settings._replace(timeout=after)))
    timer.daemon = True
    timer.name = f"hang_guard {item.nodeid}"
    timer.start()
    faulthandler.dump_traceback_later(after + min(grace, FAULTHANDLER_EXTRA_S), exit=True, file=item.config.stash[_STDERR])
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        timer.cancel()
