"""RESULTS.md stays true to the committed evaluation files and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from rbn.experiments.report import load_results, markdown

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "results"


def test_results_tables_are_what_the_report_makes_of_the_committed_json():
    tables = markdown(load_results(RESULTS)).strip()
    assert tables in (ROOT / "RESULTS.md").read_text(), "regenerate the tables: rbn report results"


def test_every_evaluated_run_has_its_checkpoint_and_five_seeds_per_arm():
    runs = sorted(RESULTS.glob("resnet20-*-s*.json"))
    seeds = {}
    for path in runs:
        result = json.loads(path.read_text())
        assert (ROOT / "checkpoints" / f"{path.stem}.pt").is_file(), path.stem
        seeds.setdefault(result["norm"], set()).add(result["seed"])
    assert seeds == {"rbn": {0, 1, 2, 3, 4}, "bn": {0, 1, 2, 3, 4}}


def test_paired_table_in_results_md_is_the_committed_one():
    """RESULTS.md quotes results/paired/paired.md as `rbn paired` wrote it (tests/rbn/experiments/test_paired.py checks that file)."""
    assert (RESULTS / "paired" / "paired.md").read_text().strip() in (ROOT / "RESULTS.md").read_text()
