"""`rbn report` draws its figures (matplotlib, the train extra) from the committed evaluation files."""

from __future__ import annotations

from pathlib import Path

from rbn.experiments.report import load_results, plot

ROOT = Path(__file__).resolve().parents[3]
PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_written_as_png(tmp_path):
    written = plot(load_results(ROOT / "results"), tmp_path)
    assert [p.name for p in written] == ["accuracy_vs_severity.png", "ood_score_histograms.png"]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000  # a drawn figure, not an empty canvas
