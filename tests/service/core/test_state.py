"""The service's state and life cycle in process (no server, no torch): lookups, readiness, the
Retry-After of a 503 while loading, start-up refusals, draining."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from tests.service.inproc import BN_MODEL, RBN_MODEL, SHIPPED, in_process

from service.core.config import Settings
from service.core.errors import ModelNotFound, NotReady, ShuttingDown
from service.core.metrics import Metrics
from service.core.state import ServiceState, StartupError


def test_lookup_primary_unknown_and_live_state():
    with in_process(primary_model=BN_MODEL) as svc:
        state = svc.state
        assert state.phase == "ready" and state.ready
        assert state.model(None).name == BN_MODEL and state.model(RBN_MODEL).name == RBN_MODEL
        assert state.models[RBN_MODEL].baseline is state.models[BN_MODEL]
        with pytest.raises(ModelNotFound, match=f"available: {BN_MODEL}, {RBN_MODEL}"):
            state.model("nope")
        live = state.live()
        assert live.ready and live.in_flight == 0
        assert {BN_MODEL, RBN_MODEL} <= set(live.queues)  # and whatever else models/ ships (the -ft candidate)
        assert live.queues == {name: (0, 0) for name in state.models}
        state.begin_drain()
        assert state.phase == "draining" and not state.ready
        assert state.model(None).name == BN_MODEL  # still served while draining
    assert state.unfinished() == []


def test_503_while_loading_carries_retry_after_from_the_settings():
    state = ServiceState(Settings(model_repository=SHIPPED, providers="cpu", retry_after_s=7), Metrics())
    with pytest.raises(NotReady) as info:
        state.model(None)
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "7"}
    state.decoder.shutdown()


def test_prepare_refuses_what_cannot_be_served(tmp_path):
    empty = ServiceState(Settings(model_repository=tmp_path, providers="cpu"), Metrics())
    with pytest.raises(StartupError, match="no servable bundle"):
        empty.prepare()
    shutil.copytree(SHIPPED / BN_MODEL, tmp_path / BN_MODEL)
    absent = ServiceState(Settings(model_repository=tmp_path, providers="cpu", primary_model="nope"), Metrics())
    with pytest.raises(StartupError, match="primary model 'nope'"):
        absent.prepare()
    alone = ServiceState(Settings(model_repository=tmp_path, providers="cpu"), Metrics())
    alone.prepare()
    assert alone.errors == {}
    for state in (empty, absent, alone):
        state.decoder.shutdown()


def test_a_model_without_its_baseline_is_served_unpaired(tmp_path):
    shutil.copytree(SHIPPED / RBN_MODEL, tmp_path / RBN_MODEL)
    with in_process(model_repository=tmp_path) as svc:
        model = svc.state.model(None)
        assert model.name == RBN_MODEL and model.baseline is None


def test_stop_drains_the_batchers_and_refuses_new_work():
    with in_process() as svc:
        model = svc.state.models[RBN_MODEL]
    assert svc.state.phase == "draining"
    with pytest.raises(ShuttingDown):
        asyncio.run(model.batcher.submit(np.zeros((1, 1, 28, 28), np.float32)))
