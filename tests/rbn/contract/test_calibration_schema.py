"""model.json's OOD calibration records what it was fitted on and its held-out false-positive rate (torch-free)."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from rbn.contract.bundle import BundleMeta, GraphOodCalibration, OodCalibration

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bundle-0.1" / "model.json"
GRAPH = {"kind": "graph", "method": "maha+energy", "threshold": 2.5, "calibration_samples": 400, "fit_samples": 1600}


def test_graph_calibration_records_source_counts_and_heldout_fpr():
    cal = GraphOodCalibration(**GRAPH, source="my-photos", heldout_samples=200, heldout_fpr=0.055)
    again = GraphOodCalibration(**json.loads(json.dumps(cal.model_dump(mode="json"))))
    assert again == cal
    assert (again.source, again.fit_samples, again.calibration_samples) == ("my-photos", 1600, 400)
    assert (again.heldout_samples, again.heldout_fpr) == (200, 0.055)


def test_older_calibrations_without_the_fields_still_parse():
    assert GraphOodCalibration(**GRAPH).source is None
    meta = BundleMeta(**json.loads(FIXTURE.read_text()))  # 0.1: rbn_stats score, no 'kind'
    assert isinstance(meta.ood, OodCalibration) and meta.ood.source is None and meta.ood.heldout_fpr is None


@pytest.mark.parametrize(("fields", "message"), [
    ({"heldout_samples": 200}, "go together"),
    ({"heldout_fpr": 0.05}, "go together"),
    ({"heldout_samples": 200, "heldout_fpr": 1.5}, "less than or equal to 1"),
    ({"heldout_samples": 0, "heldout_fpr": 0.0}, "greater than or equal to 1"),
])  # fmt: skip
def test_inconsistent_heldout_figures_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        GraphOodCalibration(**GRAPH, **fields)
