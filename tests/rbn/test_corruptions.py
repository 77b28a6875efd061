"""Tests for rbn.corruptions: registry, determinism, shapes, severity monotonicity, no torch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rbn import corruptions as C
from rbn.corruptions import CORRUPTION_NAMES, CORRUPTIONS, SEVERITIES, corrupt
from rbn.data import DatasetError, load_split

REPO = Path(__file__).resolve().parents[2]
NOISY = ("gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "fog", "rotate", "shear", "translate")


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    """50 Fashion-MNIST test images (skips when the data set is not installed)."""
    try:
        return load_split("test").images[:50]
    except DatasetError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def synthetic() -> np.ndarray:
    """A light blob on a dark background, with some texture, 28x28 uint8."""
    yy, xx = np.mgrid[0:28, 0:28]
    blob = np.exp(-((yy - 14) ** 2 + (xx - 13) ** 2) / 40.0) * 220
    texture = np.random.default_rng(1).integers(0, 30, (28, 28))
    return np.clip(blob + texture * (blob > 40), 0, 255).astype(np.uint8)


def test_registry_names_and_tables():
    assert len(CORRUPTIONS) >= 13
    assert CORRUPTION_NAMES == tuple(sorted(CORRUPTIONS))
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert set(C.SEVERITY_PARAMS) == set(CORRUPTIONS)
    assert all(len(table) == 5 for table in C.SEVERITY_PARAMS.values())


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_single_image_keeps_shape_dtype_and_changes_image(name, synthetic):
    for severity in SEVERITIES:
        out = corrupt(synthetic, name, severity, seed=3)
        assert out.shape == synthetic.shape and out.dtype == np.uint8
    assert not np.array_equal(corrupt(synthetic, name, 5, seed=3), synthetic)


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_batch_matches_per_image_streams(name, synthetic):
    batch = np.stack([synthetic, synthetic[::-1], synthetic[:, ::-1]])
    out = corrupt(batch, name, 3, seed=11)
    assert out.shape == batch.shape and out.dtype == np.uint8
    for i in range(len(batch)):
        np.testing.assert_array_equal(out[i], corrupt(batch[i], name, 3, seed=11, first_index=i))
    tail = corrupt(batch[1:], name, 3, seed=11, first_index=1)  # chunking does not change the result
    np.testing.assert_array_equal(out[1:], tail)


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_deterministic_for_a_seed(name, synthetic):
    np.testing.assert_array_equal(corrupt(synthetic, name, 4, seed=7), corrupt(synthetic, name, 4, seed=7))


@pytest.mark.parametrize("name", NOISY)
def test_random_families_differ_across_seeds_and_images(name, synthetic):
    by_seed = {corrupt(synthetic, name, 4, seed=seed).tobytes() for seed in range(6)}
    by_image = corrupt(np.stack([synthetic] * 12), name, 4, seed=0)
    assert len(by_seed) > 1  # rotate/shear only draw a sign, so compare several seeds
    assert len({image.tobytes() for image in by_image}) > 1  # per-image streams, not one pattern for all


@pytest.mark.parametrize("shape", [(8, 8), (9, 13), (40, 64)])
@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_any_size_at_least_8(name, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for severity in (1, 5):
        out = corrupt(image, name, severity, seed=2)
        assert out.shape == shape and out.dtype == np.uint8


def test_extreme_inputs_stay_in_range():
    for value in (0, 255):
        image = np.full((2, 12, 12), value, dtype=np.uint8)
        for name in CORRUPTION_NAMES:
            out = corrupt(image, name, 5)
            assert out.dtype == np.uint8 and out.shape == image.shape


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_severity_is_monotone_on_real_images(name, real_images):
    clean = real_images.astype(np.float64)
    mad = [np.abs(corrupt(real_images, name, s, seed=0).astype(np.float64) - clean).mean() for s in SEVERITIES]
    assert mad[0] > 0.5, mad
    assert all(later > earlier for earlier, later in zip(mad, mad[1:])), mad


def test_photometric_families_do_what_they_say(synthetic):
    x = synthetic.astype(np.float64)
    assert corrupt(synthetic, "brightness", 3).astype(np.float64).mean() > x.mean() + 40
    assert corrupt(synthetic, "contrast", 3).astype(np.float64).std() < 0.5 * x.std()
    assert corrupt(synthetic, "defocus_blur", 5).astype(np.float64).std() < x.std()
    pix = corrupt(synthetic, "pixelate", 5)
    assert len(np.unique(pix)) < len(np.unique(synthetic))


def test_empty_batch():
    out = corrupt(np.zeros((0, 28, 28), np.uint8), "fog", 2)
    assert out.shape == (0, 28, 28) and out.dtype == np.uint8


def test_unknown_name_lists_valid_names(synthetic):
    with pytest.raises(ValueError, match="gaussian_noise") as info:
        corrupt(synthetic, "snow_storm", 1)
    assert "snow_storm" in str(info.value)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True])
def test_bad_severity(severity, synthetic):
    with pytest.raises(ValueError, match="severity"):
        corrupt(synthetic, "contrast", severity)


def test_bad_inputs(synthetic):
    with pytest.raises(TypeError, match="uint8"):
        corrupt(synthetic.astype(np.float32), "contrast", 1)
    with pytest.raises(ValueError, match="shape"):
        corrupt(np.zeros((7, 28), np.uint8), "contrast", 1)
    with pytest.raises(ValueError, match="shape"):
        corrupt(np.zeros((1, 1, 28, 28), np.uint8), "contrast", 1)
    with pytest.raises(ValueError, match="seed"):
        corrupt(synthetic, "contrast", 1, seed=-1)


def test_import_does_not_pull_in_torch():
    code = "import rbn.corruptions, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
