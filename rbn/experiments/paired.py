"""RBN minus BN over seeds, with intervals: is the robustness gain larger than the noise?

Two sources of noise make one seed's difference uncertain: which seed was trained (the models differ
run to run) and which test images were drawn (the corruption suite uses the first N test images).
This module keeps, per model, which images it classified right (``Correctness``), so both can be
resampled:

- **over seeds, paired:** a t interval over the per-seed differences (RBN seed s minus BN seed s).
  The pairing is by design, not bookkeeping: `rbn train` with seed s gives both arms the same initial
  weights for every parameter they share and the same data order and augmentation (common random
  numbers), so RBN seed s and BN seed s differ only by the normalisation layer;
- **over seeds, unpaired:** Welch's interval for the difference of the arms' means, which ignores
  the pairing: the check that the answer does not rest on it;
- **over test images:** a bootstrap of the images (the same draw for every model, since all models
  see the same images) with the seeds held fixed;
- **both:** a two-level bootstrap, seeds first, then images.

The correctness arrays are regenerated from the checkpoints with the evaluation's own corruptions
(rbn.experiments.evaluate's seed and image set), so their means are exactly `rbn evaluate`'s accuracies
(tests/rbn/experiments/test_paired.py checks that against the committed results). Torch-free once computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rbn.contract.corruptions import CORRUPTION_NAMES, SEVERITIES, corrupt

CLEAN = "clean"
MEAN = "mean_corruption"  # the mean over families and severities, as RESULTS.md's headline


@dataclass(frozen=True)
class Correctness:
    """Which test images one model classifies right: clean (N,) and per family (severities, n)."""

    model: str
    norm: str
    seed: int
    clean: np.ndarray
    corrupted: dict[str, np.ndarray]

    def save(self, path: Path) -> None:
        packed = {f"c_{family}": np.packbits(v, axis=-1) for family, v in self.corrupted.items()}
        np.savez_compressed(path, clean=np.packbits(self.clean), n_clean=len(self.clean),
                            n_corrupted=next(iter(self.corrupted.values())).shape[-1],
                            meta=np.array([self.model, self.norm, str(self.seed)]), **packed)

    @classmethod
    def load(cls, path: Path) -> Correctness:
        with np.load(path) as z:
            model, norm, seed = (str(v) for v in z["meta"])
            n_clean, n = int(z["n_clean"]), int(z["n_corrupted"])
            clean = np.unpackbits(z["clean"])[:n_clean].astype(bool)
            corrupted = {k[2:]: np.unpackbits(z[k], axis=-1)[..., :n].astype(bool) for k in z.files if k.startswith("c_")}
        return cls(model, norm, int(seed), clean, corrupted)

    def accuracy(self, quantity: str, images: np.ndarray | None = None) -> float:
        """Accuracy on ``quantity`` (clean, a family, or the mean corruption), on the chosen images."""
        if quantity == CLEAN:
            return float(self.clean[images].mean() if images is not None else self.clean.mean())
        families = list(self.corrupted) if quantity == MEAN else [quantity]
        stacked = np.stack([self.corrupted[f] for f in families])  # (F, S, n)
        if images is not None:
            stacked = stacked[..., images]
        return float(stacked.mean())


def corrupted_sets(images: np.ndarray, seed: int = 0, families: tuple[str, ...] = CORRUPTION_NAMES) -> dict[str, list[np.ndarray]]:
    """The evaluation's corrupted images, made once and shared by every model."""
    return {family: [corrupt(images, family, s, seed=seed) for s in SEVERITIES] for family in families}


def correctness(model: str, norm: str, seed: int, predict, clean_images: np.ndarray, labels: np.ndarray,
                corrupted: dict[str, list[np.ndarray]]) -> Correctness:
    """``predict(uint8 images) -> predicted labels`` over the clean test set and every corrupted set."""
    n = len(next(iter(corrupted.values()))[0])
    clean = predict(clean_images) == labels
    per_family = {family: np.stack([predict(x) == labels[:n] for x in sets]) for family, sets in corrupted.items()}
    return Correctness(model, norm, seed, clean, per_family)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedDifference:
    """RBN minus BN accuracy (in points) on one quantity, with the per-seed differences and three intervals."""

    quantity: str
    per_seed: list[float]
    over_seeds: Interval  # t interval, seeds as the unit
    unpaired: Interval  # Welch's interval over seeds, pairing ignored
    over_images: Interval  # bootstrap of test images, seeds fixed
    both: Interval  # two-level bootstrap


def t_interval(values: np.ndarray, level: float = 0.95) -> Interval:
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return Interval(mean, float("nan"), float("nan"))
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return Interval(mean, mean - half, mean + half)


def welch_interval(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> Interval:
    """Welch's interval for mean(a) - mean(b), unequal variances (Welch-Satterthwaite degrees of freedom)."""
    from scipy import stats

    estimate = float(np.mean(a) - np.mean(b))
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    if se == 0:
        return Interval(estimate, estimate, estimate)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df) * se)
    return Interval(estimate, estimate - half, estimate + half)


def _percentile_interval(estimate: float, draws: np.ndarray, level: float) -> Interval:
    low, high = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(estimate, float(low), float(high))


def _image_weights(rng: np.random.Generator, n: int, draws: int) -> np.ndarray:
    """Bootstrap draws of n images as counts (draws, n): resampling without building index arrays."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float32)


def _per_image(c: Correctness, quantity: str) -> np.ndarray:
    """Per image, the fraction of the quantity's cells it got right: (n,)."""
    if quantity == CLEAN:
        return c.clean.astype(np.float32)
    families = list(c.corrupted) if quantity == MEAN else [quantity]
    return np.stack([c.corrupted[f] for f in families]).mean(axis=(0, 1), dtype=np.float32)


def paired_difference(rbn: list[Correctness], bn: list[Correctness], quantity: str, draws: int = 2000,
                      level: float = 0.95, seed: int = 0) -> PairedDifference:
    """RBN minus BN (points) on ``quantity`` for models paired by seed (both lists sorted by seed)."""
    if [c.seed for c in rbn] != [c.seed for c in bn]:
        raise ValueError(f"unpaired seeds: rbn {[c.seed for c in rbn]}, bn {[c.seed for c in bn]}")
    rbn_images = np.stack([_per_image(c, quantity) for c in rbn])  # (S, n)
    bn_images = np.stack([_per_image(c, quantity) for c in bn])
    diffs = rbn_images - bn_images
    per_seed = diffs.mean(axis=1) * 100
    estimate = float(per_seed.mean())
    rng = np.random.default_rng(seed)
    weights = _image_weights(rng, diffs.shape[1], draws)  # (D, n)
    by_seed = weights @ diffs.T / diffs.shape[1] * 100  # (D, S): each draw's per-seed differences
    over_images = _percentile_interval(estimate, by_seed.mean(axis=1), level)
    seed_draws = rng.integers(0, len(per_seed), size=(draws, len(per_seed)))
    both = np.take_along_axis(by_seed, seed_draws, axis=1).mean(axis=1)
    return PairedDifference(quantity, [round(float(v), 4) for v in per_seed], t_interval(per_seed, level),
                            welch_interval(rbn_images.mean(axis=1) * 100, bn_images.mean(axis=1) * 100, level), over_images,
                            _percentile_interval(estimate, both, level))


def load_all(folder: Path) -> tuple[list[Correctness], list[Correctness]]:
    """The from-scratch models' correctness files in ``folder``, as (rbn, bn) lists sorted by seed."""
    found = [Correctness.load(p) for p in sorted(folder.glob("*.npz"))]
    by_norm = {norm: sorted((c for c in found if c.norm == norm), key=lambda c: c.seed) for norm in ("rbn", "bn")}
    return by_norm["rbn"], by_norm["bn"]


def report(rbn: list[Correctness], bn: list[Correctness], draws: int = 2000) -> list[PairedDifference]:
    families = list(rbn[0].corrupted)
    return [paired_difference(rbn, bn, q, draws) for q in [CLEAN, MEAN, *families]]


def markdown(rows: list[PairedDifference], seeds: list[int]) -> str:
    def cell(i: Interval) -> str:
        return f"[{i.low:+.2f}, {i.high:+.2f}]"

    lines = [
        f"RBN minus BN accuracy, points, seeds {', '.join(map(str, seeds))}, paired by seed (same initial weights, "
        "data order and augmentation); 95% intervals.",
        "",
        "| quantity | per-seed differences | mean | over seeds, paired (t) | over seeds, unpaired (Welch) | over test images (bootstrap) | both (two-level bootstrap) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = {CLEAN: "clean", MEAN: "**mean corruption**"}.get(r.quantity, r.quantity)
        per_seed = " ".join(f"{v:+.2f}" for v in r.per_seed)
        lines.append(f"| {name} | {per_seed} | {r.over_seeds.estimate:+.2f} | {cell(r.over_seeds)} | {cell(r.unpaired)} | {cell(r.over_images)} | {cell(r.both)} |")
    return "\n".join(lines) + "\n"


def as_json(rows: list[PairedDifference]) -> list[dict]:
    def interval(i: Interval) -> dict:
        return {"estimate": i.estimate, "low": i.low, "high": i.high}

    return [{"quantity": r.quantity, "per_seed": r.per_seed, "over_seeds": interval(r.over_seeds),
             "unpaired": interval(r.unpaired),
             "over_images": interval(r.over_images), "both": interval(r.both)} for r in rows]
