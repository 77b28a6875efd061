"""Tests for rbn.contract.corruptions: registry, determinism, shapes, severity monotonicity, no torch."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rbn.contract import corruptions as C
from rbn.contract.corruptions import CORRUPTION_NAMES, CORRUPTIONS, SEVERITIES, corrupt
from rbn.experiments.data import load_split

REPO = Path(__file__).resolve().parents[3]
NOISY = ("gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "fog", "rotate", "shear", "translate")


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    """50 Fashion-MNIST test images (Debian's dataset-fashion-mnist, which ./run.sh test installs)."""
    return load_split("test").images[:50]


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


# sha256 of corrupt(np.stack([synthetic, synthetic.T[::-1]]), name, 3, seed=0).tobytes(), one per family.
GOLDEN_SEVERITY_3_SEED_0 = {
    "brightness": "a31ea87bc63e1444df892b36f0f3303bf66f12b3682d5fe4ac76481a733db2f9",
    "contrast": "646826e824dec566ef050c6f59fecb9902350b979cd8732a769d06dff72020f6",
    "defocus_blur": "d1da928ecc7cb8e1e7a39b6688eab1343a9bca260e18d7865aaf09489c1359c2",
    "fog": "6fe63fdd9e83b1b81841b2d951d0bcbdadaac6e6ae38b6fe7335274044d7b84d",
    "gaussian_noise": "8804b1cce640b82cfb342958f05e00ab7d0b29842f04c9c36b10ca09701672f7",
    "impulse_noise": "aaa1c1496d42b5f213941893fbbeb3d6a1da054f26917e66e886c6552e7e477b",
    "jpeg_compression": "f1c284fd105b1bc6daeb347c13bc0d982b7d4c10b8af51ec3ea4159d4a75393d",
    "motion_blur": "e0e9a00b8f1ca0fb23d0735c6dd7a1dba6f637f8b517cf4a968dd1714bad33f1",
    "pixelate": "340dd646bc82301864dfab39560575e8cf8611871cfa4ad6db28d95b95bee262",
    "rotate": "03d5d41c7106c0d30f9c7d33d7c70aa7aa27dea638148bbc8e8dad6a50f24ef0",
    "shear": "710d8e0794223eea66a5e62e9a6ec64c1305a94dcf3f3db5fd2c7455fbdd49b4",
    "shot_noise": "a3db93e046b1d423a4bb1528523845bc1367b048ac98da579318910dc4dc3be6",
    "translate": "a934aa5776242ce11bddb4d973d80afe92b73f581576300cb747d9d7d3477e0d",
    "zoom_blur": "c2e93182deccb19bcd9600cfb30599672cbb0a38a65b070f7df459361e09df67",
}


def test_golden_hashes_cover_every_family():
    assert set(GOLDEN_SEVERITY_3_SEED_0) == set(CORRUPTION_NAMES)


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_output_matches_its_golden_hash(name, synthetic):
    """The exact bytes each family gives at severity 3, seed 0, across processes and upgrades.

    Every /ab answer, the corruption tables in results/ and RESULTS.md are computed from these
    outputs, so a NumPy or Pillow upgrade (or a code change) that moves one pixel must fail here.
    Changing a hash is a conscious act: regenerate results/ and RESULTS.md with the
    new outputs, re-pin the /ab values in tests/service/http/test_shipped_models_http.py, and say so in the
    commit message.
    """
    batch = np.stack([synthetic, synthetic.T[::-1]])
    out = corrupt(batch, name, 3, seed=0)
    assert hashlib.sha256(out.tobytes()).hexdigest() == GOLDEN_SEVERITY_3_SEED_0[name]


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
    code = "import rbn.contract.corruptions, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
