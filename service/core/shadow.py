"""Shadow traffic: a fraction of /predict requests also runs on the model's baseline, off the request path."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random

import numpy as np

from service.core import context as request_context
from service.core.errors import QueueFull, ServiceError
from service.core.metrics import Metrics
from service.core.model import Model

log = logging.getLogger(__name__)


class Shadow:
    def __init__(self, fraction: float, max_pending: int, metrics: Metrics, rng: random.Random | None = None) -> None:
        self.fraction = fraction
        self.max_pending = max_pending  # shadow runs in flight at most; beyond it they are dropped
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task] = set()

    def maybe_run(self, model: Model, x: np.ndarray, predicted: np.ndarray) -> None:
        """With probability ``fraction``, run ``x`` on the baseline later and count agreement with ``predicted``."""
        if not self.fraction or model.baseline is None or self._rng.random() >= self.fraction:
            return
        if len(self._tasks) >= self.max_pending:
            self.metrics.shadow_dropped.labels(model.name, "backlog").inc(len(x))
            return
        # Its own context: the batcher must not drop shadow work when the request's client disconnects
        # or its deadline passes; the request id stays, for the log.
        context = contextvars.copy_context()
        context.run(request_context.current.set, request_context.RequestContext(request_context.request_id() or ""))
        task = asyncio.get_running_loop().create_task(self._run(model, x, predicted), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, model: Model, x: np.ndarray, predicted: np.ndarray) -> None:
        baseline = model.baseline
        try:
            result = await baseline.infer(x)
        except QueueFull:
            self.metrics.shadow_dropped.labels(model.name, "queue_full").inc(len(x))
            return
        except ServiceError as exc:
            log.warning("shadow run of %s on %s failed: %s", model.name, baseline.name, exc)
            self.metrics.shadow_dropped.labels(model.name, "error").inc(len(x))
            return
        agree = result.logits.argmax(axis=1) == predicted
        same = int(agree.sum())
        counter = self.metrics.shadow
        if same:
            counter.labels(model.name, baseline.name, "true").inc(same)
        if same < len(agree):
            counter.labels(model.name, baseline.name, "false").inc(len(agree) - same)

    async def stop(self) -> None:
        """Let running shadow work finish (the batchers are still up)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
