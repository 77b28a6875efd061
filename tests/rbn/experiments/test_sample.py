"""Tests for the shipped sample (samples/) and rbn.experiments.sample.write_sample."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rbn.experiments.data import LABELS, load_split
from rbn.experiments.sample import PHOTO_SIZE, first_per_class, slug, write_sample

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


@pytest.fixture(scope="module")
def test_split():
    return load_split("test")  # DatasetError names the Debian package when it is missing


def _entries(folder: Path) -> list[dict]:
    return json.loads((folder / "labels.json").read_text())


def test_slug():
    assert slug("T-shirt/top") == "t-shirt-top"
    assert slug("Ankle boot") == "ankle-boot"


def test_shipped_fashion_mnist_sample_is_balanced_and_labelled():
    entries = _entries(SAMPLES / "fashion-mnist")
    assert len(entries) == 10 * len(LABELS)
    assert sorted(e["label"] for e in entries) == sorted(list(range(10)) * 10)
    for e in entries:
        assert set(e) >= {"file", "label", "label_name"}
        assert e["label_name"] == LABELS[e["label"]]
        assert e["file"] == f"{e['index']}_{slug(e['label_name'])}.png"
        with Image.open(SAMPLES / "fashion-mnist" / e["file"]) as image:
            assert image.mode == "L" and image.size == (28, 28)


def test_shipped_sample_matches_the_test_set(test_split):
    entries = _entries(SAMPLES / "fashion-mnist")
    assert [e["index"] for e in entries] == first_per_class(test_split.labels, 10)
    for e in entries:
        assert e["label"] == int(test_split.labels[e["index"]])
        pixels = np.asarray(Image.open(SAMPLES / "fashion-mnist" / e["file"]))
        np.testing.assert_array_equal(pixels, test_split.images[e["index"]])  # PNG is lossless


def test_shipped_photos_decode_and_match(test_split):
    entries = _entries(SAMPLES / "photos")
    modes = {}
    for e in entries:
        index = e["index"]
        assert e["label"] == int(test_split.labels[index]) and e["label_name"] == LABELS[e["label"]]
        with Image.open(SAMPLES / "photos" / e["file"]) as image:
            image.load()
        modes.setdefault(image.mode, []).append(image)
        original = test_split.images[index].astype(np.float64)
        if image.mode == "RGB":
            assert image.format == "JPEG" and image.size == (PHOTO_SIZE, PHOTO_SIZE)
            rgb = np.asarray(image).astype(np.float64)
            assert rgb[:8, :8].mean() > 200  # light background ...
            small = np.asarray(image.convert("L").resize((28, 28), Image.Resampling.BOX), dtype=np.float64)
            assert np.corrcoef((255 - small).ravel(), original.ravel())[0, 1] > 0.9  # ... dark object
        elif image.mode == "RGBA":
            rgba = np.asarray(image)
            assert rgba[..., 3].min() == 0 and rgba[..., 3].max() > 200  # transparent background
            on_white = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("L")
            small = np.asarray(on_white.resize((28, 28), Image.Resampling.BOX), dtype=np.float64)
            assert np.corrcoef((255 - small).ravel(), original.ravel())[0, 1] > 0.9
        elif image.mode.startswith("I;16"):
            values = np.asarray(image).astype(np.int64)
            assert values.max() > 255
            np.testing.assert_array_equal(values // 257, original.astype(np.int64))
    assert len(modes.get("RGB", [])) == 3 and len(modes.get("RGBA", [])) == 1
    assert sum(len(v) for k, v in modes.items() if k.startswith("I;16")) == 1


def test_shipped_sample_is_small():
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 300_000


def test_write_sample_reproduces_the_shipped_files(tmp_path, test_split):
    write_sample(tmp_path, per_class=1)
    entries = _entries(tmp_path / "fashion-mnist")
    assert len(entries) == 10 and sorted(e["label"] for e in entries) == list(range(10))
    for e in entries:
        mine = np.asarray(Image.open(tmp_path / "fashion-mnist" / e["file"]))
        shipped = np.asarray(Image.open(SAMPLES / "fashion-mnist" / e["file"]))
        np.testing.assert_array_equal(mine, shipped)
    assert _entries(tmp_path / "photos") == _entries(SAMPLES / "photos")
