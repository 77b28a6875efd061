"""service.core.abstats: the Wilson interval and the thread-safe, bounded A/B tally behind GET /ab/summary."""

from __future__ import annotations

import threading

import pytest

from service.core.abstats import AbTally, rate, wilson
from service.core.answers import AbResult, ArmsCorrect, ModelRef, OodVerdict, Prediction


@pytest.mark.parametrize(("k", "n", "low", "high", "digits"), [
    (5, 10, 0.236593, 0.763407, 6),   # symmetric around 0.5
    (0, 10, 0.0, 0.277533, 6),        # stays inside 0..1 at 0%
    (10, 10, 0.722467, 1.0, 6),
    (81, 263, 0.2553, 0.3662, 4),     # Newcombe (1998), Statistics in Medicine 17:857, method 3, as published
])
def test_wilson_interval_matches_reference_values(k, n, low, high, digits):
    assert wilson(k, n) == pytest.approx((low, high), abs=0.5 * 10**-digits)


def test_wilson_without_observations_and_bad_counts():
    assert wilson(0, 0) == (0.0, 1.0)
    assert rate(0, 0) == {"successes": 0, "total": 0, "value": None, "low": 0.0, "high": 1.0}
    with pytest.raises(ValueError, match="within 0..3"):
        wilson(4, 3)


def result(agree: bool, rbn: bool | None = None, baseline: bool | None = None) -> AbResult:
    def answer(index: int) -> Prediction:
        return Prediction("x", index, 1.0, [], OodVerdict(None, None, {}))

    return AbResult(ModelRef("m", 1), answer(0), ModelRef("b", 1), answer(0 if agree else 1), 0.0, 0.0,
                    None if rbn is None else ArmsCorrect(rbn, baseline))


def test_rows_per_pair_corruption_and_severity():
    tally = AbTally()
    tally.add("m", "b", "fog", 2, [result(True, True, True), result(False, True, False), result(True)])
    tally.add("m", "b", "none", 0, [result(True)])
    summary = tally.summary()
    assert summary["scope"] == "process" and summary["comparisons"] == 4 and summary["dropped"] == 0
    fog, clean = summary["rows"]
    assert (fog["corruption"], fog["severity"], clean["corruption"], clean["severity"]) == ("fog", 2, "none", 0)
    assert fog["comparisons"] == 3 and fog["labelled"] == 2
    assert fog["agreement"] == rate(2, 3)
    assert fog["accuracy"] == {"rbn": rate(2, 2), "baseline": rate(1, 2)}
    assert clean["accuracy"] is None and clean["agreement"]["value"] == 1.0


def test_concurrent_adds_lose_nothing():
    tally = AbTally()
    threads, per_thread = 8, 2000

    def work() -> None:
        for i in range(per_thread):
            tally.add("m", "b", "fog", 1 + i % 5, [result(i % 3 == 0, i % 2 == 0, True)])

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    rows = tally.summary()["rows"]
    assert [r["severity"] for r in rows] == [1, 2, 3, 4, 5]
    assert sum(r["comparisons"] for r in rows) == threads * per_thread
    assert sum(r["agreement"]["successes"] for r in rows) == threads * len(range(0, per_thread, 3))
    assert sum(r["accuracy"]["rbn"]["successes"] for r in rows) == threads * per_thread // 2


def test_memory_is_bounded_by_max_cells():
    tally = AbTally(max_cells=2)
    for severity in (1, 2, 3, 4):
        tally.add("m", "b", "fog", severity, [result(True), result(False)])
    summary = tally.summary()
    assert len(summary["rows"]) == 2 and summary["dropped"] == 4 and summary["comparisons"] == 4
