"""RBN minus BN over seeds: the interval arithmetic, the storage, and agreement with `rbn evaluate`."""

import json
from pathlib import Path

import numpy as np
import pytest

from rbn.experiments import paired
from rbn.experiments.paired import CLEAN, MEAN, Correctness

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "results" / "paired"


def model(norm: str, seed: int, clean: np.ndarray, fog: np.ndarray, blur: np.ndarray) -> Correctness:
    return Correctness(f"m-{norm}-{seed}", norm, seed, clean.astype(bool), {"fog": fog.astype(bool), "blur": blur.astype(bool)})


def random_model(rng: np.random.Generator, norm: str, seed: int, p: float, n: int = 400) -> Correctness:
    return model(norm, seed, rng.random(1000) < p, rng.random((5, n)) < p, rng.random((5, n)) < p)


def test_save_and_load_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(1)
    original = random_model(rng, "rbn", 3, 0.7, n=203)  # not a multiple of 8: packbits padding must not leak
    original.save(tmp_path / "m.npz")
    loaded = Correctness.load(tmp_path / "m.npz")
    assert (loaded.model, loaded.norm, loaded.seed) == ("m-rbn-3", "rbn", 3)
    assert np.array_equal(loaded.clean, original.clean)
    assert loaded.corrupted.keys() == original.corrupted.keys()
    assert all(np.array_equal(loaded.corrupted[f], original.corrupted[f]) for f in original.corrupted)


def test_accuracies_of_quantities():
    ones, zeros = np.ones((5, 4)), np.zeros((5, 4))
    m = model("rbn", 0, np.array([1, 1, 0, 0]), ones, zeros)
    assert m.accuracy(CLEAN) == 0.5 and m.accuracy("fog") == 1.0 and m.accuracy("blur") == 0.0
    assert m.accuracy(MEAN) == 0.5
    assert m.accuracy(CLEAN, np.array([0, 0, 1])) == 1.0  # a bootstrap draw may repeat images


def test_identical_arms_differ_by_exactly_zero():
    rng = np.random.default_rng(2)
    arms = [random_model(rng, "rbn", s, 0.6) for s in range(3)]
    twins = [Correctness(c.model, "bn", c.seed, c.clean, c.corrupted) for c in arms]
    for row in paired.report(arms, twins, draws=200):
        assert row.per_seed == [0.0, 0.0, 0.0]
        for interval in (row.over_seeds, row.over_images, row.both):
            assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
        assert row.unpaired.estimate == 0.0 and row.unpaired.low == -row.unpaired.high  # the arms' seed spread remains


def test_welch_interval_is_scipys_unequal_variance_t_test():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0, 8.0, 9.0])
    from scipy import stats

    reference = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    got = paired.welch_interval(a, b)
    assert got.estimate == pytest.approx(-4.75)
    assert (got.low, got.high) == pytest.approx((reference.low, reference.high), rel=1e-9)


def test_known_difference_and_t_interval():
    """RBN right on every image and BN right on half: +50 points on each seed."""
    n = 400
    half = np.arange(n) % 2 == 0
    rbn = [model("rbn", s, np.ones(1000), np.ones((5, n)), np.ones((5, n))) for s in range(3)]
    bn = [model("bn", s, np.ones(1000), np.tile(half, (5, 1)), np.tile(half, (5, 1))) for s in range(3)]
    row = paired.paired_difference(rbn, bn, MEAN, draws=500)
    assert row.per_seed == [50.0, 50.0, 50.0]
    assert row.over_seeds.estimate == 50.0 and row.over_seeds.low == row.over_seeds.high == 50.0  # no spread over seeds
    assert 44 < row.over_images.low < 50 < row.over_images.high < 56  # a fair coin over 400 images: sd 2.5 points
    # t interval by hand: differences 1, 2, 6 -> mean 3, sd sqrt(7), t(0.975, 2) = 4.302653
    t = paired.t_interval(np.array([1.0, 2.0, 6.0]))
    half_width = 4.302653 * np.sqrt(7) / np.sqrt(3)
    assert t.estimate == 3.0 and t.low == pytest.approx(3 - half_width, rel=1e-6) and t.high == pytest.approx(3 + half_width, rel=1e-6)


def test_unpaired_seeds_are_refused():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="unpaired seeds"):
        paired.paired_difference([random_model(rng, "rbn", 0, 0.5)], [random_model(rng, "bn", 1, 0.5)], CLEAN)


def test_committed_correctness_equals_the_committed_evaluations():
    """Two code paths, one answer: the per-image files reproduce `rbn evaluate`'s accuracies exactly."""
    files = sorted(COMMITTED.glob("*.npz"))
    assert len(files) >= 6, "results/paired/ holds the from-scratch models' correctness files"
    for path in files:
        c = Correctness.load(path)
        doc = json.loads((ROOT / "results" / f"{c.model}.json").read_text())
        assert c.accuracy(CLEAN) == pytest.approx(doc["clean_accuracy"], abs=1e-12), c.model
        for family, accs in doc["corruption_accuracy"].items():
            got = [float(v.mean()) for v in c.corrupted[family]]
            assert got == pytest.approx(accs, abs=1e-12), (c.model, family)
        assert c.accuracy(MEAN) == pytest.approx(doc["mean_corruption_accuracy"], abs=1e-9)


def numbers(row: dict) -> list[float]:
    """A report row's figures in a fixed order: the per-seed differences, then each interval's three."""
    return [*row["per_seed"], *(row[k][f] for k in ("over_seeds", "unpaired", "over_images", "both") for f in ("estimate", "low", "high"))]


def test_committed_report_is_what_the_files_give():
    rbn, bn = paired.load_all(COMMITTED)
    doc = json.loads((COMMITTED / "paired.json").read_text())
    assert doc["seeds"] == [c.seed for c in rbn] == [c.seed for c in bn]
    rows = paired.report(rbn, bn, draws=doc["draws"])
    # Same draws, same seed; the bootstrap's float32 matrix product may sum in another order under
    # another BLAS build or CPU (about 1e-6 points apart), so the JSON numbers match to 1e-4 points
    # and the markdown (two decimals) exactly.
    got = paired.as_json(rows)
    assert [r["quantity"] for r in got] == [r["quantity"] for r in doc["rows"]]
    for mine, theirs in zip(got, doc["rows"], strict=True):
        assert numbers(mine) == pytest.approx(numbers(theirs), abs=1e-4, nan_ok=True), mine["quantity"]
    assert (COMMITTED / "paired.md").read_text() == paired.markdown(rows, doc["seeds"])


def test_the_committed_report_check_survives_another_summation_order(monkeypatch):
    """What another BLAS would do: the bootstrap's products summed in two halves."""
    matmul = np.matmul

    def halves(a, b):
        if a.ndim == 2 and b.ndim == 2 and a.shape[1] > 1 and a.dtype == np.float32:
            k = a.shape[1] // 2
            return matmul(a[:, :k], b[:k]) + matmul(a[:, k:], b[k:])
        return matmul(a, b)

    class Weights(np.ndarray):  # the (draws, images) weights, multiplied through ``halves``
        def __matmul__(self, other):
            return halves(np.asarray(self), np.asarray(other))

    draw = paired._image_weights
    monkeypatch.setattr(paired, "_image_weights", lambda *a: draw(*a).view(Weights))
    rbn, bn = paired.load_all(COMMITTED)
    doc = json.loads((COMMITTED / "paired.json").read_text())
    reordered = paired.as_json(paired.report(rbn, bn, draws=doc["draws"]))
    assert reordered != doc["rows"]  # the order shows in the last bits ...
    for mine, theirs in zip(reordered, doc["rows"], strict=True):  # ... and not beyond 1e-4 points
        assert numbers(mine) == pytest.approx(numbers(theirs), abs=1e-4, nan_ok=True), mine["quantity"]
