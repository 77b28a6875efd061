"""Tests for rbn.experiments.far_ood: sklearn digits as 28x28 light-on-dark uint8 images."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rbn.experiments.data import DatasetError
from rbn.experiments.far_ood import load_digits_28, upscale

REPO = Path(__file__).resolve().parents[3]


def test_digits_are_28x28_uint8_light_on_dark():
    images = load_digits_28()
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]].astype(np.float64).mean()
    centre = images[:, 10:18, 10:18].astype(np.float64).mean()
    assert corners < 10 < centre  # dark background, light ink


def test_matches_the_8x8_source():
    import sklearn.datasets as sklearn_datasets  # the train extra
    source = sklearn_datasets.load_digits().images
    images = load_digits_28()
    # The bright pixels of the 8x8 source land on bright pixels of the 28x28 image.
    centres = np.round((np.arange(8) + 0.5) * 28 / 8 - 0.5).astype(int)
    sampled = images[:, centres][:, :, centres].astype(np.float64)
    correlation = np.corrcoef(sampled.ravel(), source.ravel())[0, 1]
    assert correlation > 0.9


def test_upscale_keeps_constant_images():
    flat = np.full((2, 8, 8), 77, dtype=np.uint8)
    out = upscale(flat)
    assert out.shape == (2, 28, 28) and out.dtype == np.uint8 and (out == 77).all()


def test_clear_error_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DatasetError, match="scikit-learn"):
        load_digits_28()


def test_import_does_not_pull_in_torch_or_sklearn():
    code = "import rbn.experiments.far_ood, sys; assert 'torch' not in sys.modules and 'sklearn' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
