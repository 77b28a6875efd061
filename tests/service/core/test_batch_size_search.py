"""The batch-size search at warm-up (``Settings.batch_size_search``): which sizes are timed, which one caps the
batcher, and when it runs at all."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from tests.photo_bundles import BN, RBN, write_photo_pair
from tests.service.inproc import in_process

from rbn.contract.bundle import InputSpec
from service.core.model import searches_batch_size
from service.core.runtime import ModelRuntime, batch_candidates


@pytest.mark.parametrize(("largest", "sizes"), [
    (1, [1]), (2, [1, 2]), (8, [1, 2, 4, 8]), (24, [1, 2, 4, 8, 16, 24]), (32, [1, 2, 4, 8, 16, 32]), (33, [1, 2, 4, 8, 16, 32, 33]),
])
def test_the_sizes_timed_are_the_powers_of_two_below_the_largest_then_the_largest(largest, sizes):
    assert batch_candidates(largest) == sizes


class _Timed(ModelRuntime):
    """A runtime whose batches take a fixed time per image (a table), so the choice can be checked exactly."""

    def __init__(self, ms_per_image: dict[int, float], spec: InputSpec) -> None:  # no session: run is replaced
        self.ms_per_image = ms_per_image
        self.meta = type("Meta", (), {"input": spec})()
        self.sizes_run: list[int] = []

    def run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        self.sizes_run.append(len(x))
        time.sleep(self.ms_per_image[len(x)] * len(x) / 1000)
        return ()


SPEC = InputSpec(channels=1, height=4, width=4, mean=(0.0,), std=(1.0,))


def test_the_largest_size_within_ten_percent_of_the_fastest_per_image_time_wins():
    # fastest at 4 (5.0 ms per image); 8 is within 10% (5.1), 16 and 32 are not: the batcher may form batches of 8.
    timed = _Timed({1: 10.0, 2: 6.0, 4: 5.0, 8: 5.1, 16: 7.0, 32: 12.0}, SPEC)
    cap, per_image = ModelRuntime.fastest_batch(timed, 32, rounds=3)
    assert cap == 8
    assert list(per_image) == [1, 2, 4, 8, 16, 32]
    assert per_image[4] == pytest.approx(5.0, abs=1.0) and per_image[32] == pytest.approx(12.0, abs=2.0)
    assert timed.sizes_run == [1, 2, 4, 8, 16, 32] * 3  # interleaved rounds, not one size after another


def test_a_model_that_only_gains_from_batches_keeps_the_full_size():
    timed = _Timed({1: 10.0, 2: 6.0, 4: 3.0, 8: 2.0}, SPEC)
    assert ModelRuntime.fastest_batch(timed, 8, rounds=2)[0] == 8


def test_a_lone_image_fastest_by_far_caps_batches_at_one():
    timed = _Timed({1: 2.0, 2: 4.0, 4: 4.5, 8: 5.0}, SPEC)
    assert ModelRuntime.fastest_batch(timed, 8, rounds=2)[0] == 1


@pytest.mark.parametrize(("setting", "side", "searches"), [
    ("auto", 96, True), ("auto", 95, False), ("auto", 28, False), ("on", 28, True), ("off", 224, False),
])
def test_auto_searches_from_96_by_96_pixels(setting, side, searches):
    spec = InputSpec(channels=3, height=side, width=side, mean=(0.0,) * 3, std=(1.0,) * 3)
    assert searches_batch_size(setting, spec) is searches


def test_the_search_caps_the_batcher_and_says_so(tmp_path, caplog):
    """A real server state on the 64-px photo pair: with the search on, each model's batcher forms batches up to
    the size it measured (one of the sizes it timed, logged with their times); off or auto (64 px < 96), the
    settings' size stays."""
    write_photo_pair(tmp_path)
    with caplog.at_level(logging.INFO, logger="service.core.model"):
        with in_process(model_repository=tmp_path, max_batch_size=8, batch_size_search="on") as svc:
            caps = {name: svc.state.models[name].batcher.max_batch_size for name in (RBN, BN)}
            assert {name: svc.state.models[name].max_batch_size for name in (RBN, BN)} == caps
    assert all(cap in (1, 2, 4, 8) for cap in caps.values()), caps
    lines = [r.getMessage() for r in caplog.records if "images (ms per image at batch" in r.getMessage()]
    assert sorted(line.split(":")[0] for line in lines) == [f"model {BN}", f"model {RBN}"]
    for line in lines:
        assert "1: " in line and "2: " in line and "4: " in line and "8: " in line
    for setting in ("auto", "off"):
        with in_process(model_repository=tmp_path, max_batch_size=8, batch_size_search=setting) as svc:
            assert svc.state.models[RBN].batcher.max_batch_size == 8
