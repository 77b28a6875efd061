"""An in-process service for the fast unit tests: the shipped bundles (models/, no torch needed),
loaded by a real ServiceState in one event loop that the tests drive. No server process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.core.config import Settings
from service.core.dataplane import DataPlane
from service.core.metrics import Metrics
from service.core.state import ServiceState

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models"
RBN_MODEL, BN_MODEL = "fmnist-resnet20-rbn", "fmnist-resnet20-bn"


class InProcess:
    """A loaded ServiceState and its DataPlane; ``run`` drives a coroutine on the service's loop."""

    def __init__(self, runner: asyncio.Runner, state: ServiceState) -> None:
        self.runner = runner
        self.state = state
        self.plane = DataPlane(state)

    def run(self, coro):
        return self.runner.run(coro)

    def counter(self, name: str, **labels: str) -> float:
        """A sample's value from the state's own Prometheus registry (0 when absent)."""
        return self.state.metrics.registry.get_sample_value(name, labels) or 0.0


@contextmanager
def in_process(**settings) -> Iterator[InProcess]:
    values = {"model_repository": SHIPPED, "providers": "cpu", "max_batch_size": 4, "intra_op_threads": 1, **settings}
    state = ServiceState(Settings(**values), Metrics())
    with asyncio.Runner() as runner:
        runner.run(state.start())
        runner.run(state.wait_loaded())
        assert state.ready, state.fatal
        try:
            yield InProcess(runner, state)
        finally:
            runner.run(state.stop())
