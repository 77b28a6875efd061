"""A/B accounting: Wilson score intervals and ``AbTally``, the in-process summary behind ``GET /ab/summary``.

Pure Python, no numpy or FastAPI: the ``rbn-serve ab-eval`` client imports ``wilson`` from here too.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.core.answers import AbResult

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95% interval
ARMS = ("rbn", "baseline")


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / total`` (both ends in 0..1; (0, 1) when total is 0).

    Preferred to the normal approximation because it stays inside 0..1 and is sensible at 0% and
    100%, which small labelled sets hit often.
    """
    if total <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= total:
        raise ValueError(f"successes must be within 0..{total}, got {successes}")
    p = successes / total
    z2 = z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(successes: int, total: int) -> dict:
    """A ``Rate``: the counts, the fraction (None when total is 0) and its Wilson 95% interval."""
    low, high = wilson(successes, total)
    return {"successes": successes, "total": total, "value": successes / total if total else None,
            "low": low, "high": high}


@dataclass
class _Cell:
    comparisons: int = 0
    agreed: int = 0
    labelled: int = 0
    rbn_correct: int = 0
    baseline_correct: int = 0


Key = tuple[str, str, str, int]  # model, baseline, corruption ("none" without one), severity (0 without one)


class AbTally:
    """Counts of /ab comparisons per model pair x corruption x severity since this object was made.

    Thread-safe (one lock; a few integer additions under it), so it does not matter whether routes run
    on the event loop or in threads. Memory is bounded: keys come from served model names and the fixed
    corruption and severity sets, and beyond ``max_cells`` new keys are counted in ``dropped`` instead.
    """

    def __init__(self, max_cells: int = 4096) -> None:
        self.max_cells = max_cells
        self.started = time.time()
        self.dropped = 0
        self._cells: dict[Key, _Cell] = {}
        self._lock = threading.Lock()

    def add(self, model: str, baseline: str, corruption: str, severity: int, results: list[AbResult]) -> None:
        """Count an /ab answer's ``results``: agreement and, when labelled, each arm's correctness."""
        key = (model, baseline, corruption, severity)
        with self._lock:
            cell = self._cells.get(key)
            if cell is None:
                if len(self._cells) >= self.max_cells:
                    self.dropped += len(results)
                    return
                cell = self._cells[key] = _Cell()
            for item in results:
                cell.comparisons += 1
                cell.agreed += item.agree
                correct = item.correct
                if correct is not None:
                    cell.labelled += 1
                    cell.rbn_correct += correct.rbn
                    cell.baseline_correct += correct.baseline

    def summary(self) -> dict:
        """An ``AbSummaryResponse``: one row per key seen, sorted by model, corruption and severity."""
        with self._lock:
            cells = [(key, _Cell(**vars(cell))) for key, cell in self._cells.items()]
            dropped = self.dropped
        rows = []
        for (model, baseline, corruption, severity), c in sorted(cells):
            accuracy = None
            if c.labelled:
                accuracy = {"rbn": rate(c.rbn_correct, c.labelled), "baseline": rate(c.baseline_correct, c.labelled)}
            rows.append({
                "model": model, "baseline": baseline, "corruption": corruption, "severity": severity,
                "comparisons": c.comparisons, "agreement": rate(c.agreed, c.comparisons),
                "labelled": c.labelled, "accuracy": accuracy,
            })
        return {
            "scope": "process",
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "comparisons": sum(c.comparisons for _, c in cells),
            "dropped": dropped,
            "rows": rows,
        }
