"""The bundle's input spec: the ImageNet convention beside the 28×28 default (torch-free)."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from rbn.contract.bundle import IMAGENET_MEAN, IMAGENET_STD, BundleMeta, InputSpec

FIXTURE = Path(__file__).parents[1] / "fixtures" / "bundle-0.1" / "model.json"


def test_imagenet_spec_is_rgb_shorter_side_crop_never_inverted():
    spec = InputSpec.imagenet()
    assert (spec.channels, spec.height, spec.width) == (3, 224, 224)
    assert spec.resize == "shorter_side_crop" and spec.resize_size == 256
    assert spec.mean == [0.485, 0.456, 0.406] and spec.std == [0.229, 0.224, 0.225]
    assert spec.invert == "never" and spec.interpolation == "bilinear"
    assert list(IMAGENET_MEAN) == spec.mean and list(IMAGENET_STD) == spec.std


def test_imagenet_spec_other_sizes_and_statistics():
    spec = InputSpec.imagenet(size=64, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")
    assert (spec.height, spec.width, spec.resize_size) == (64, 64, 73)  # round(64 / 0.875)
    assert spec.mean == [0.5] * 3 and spec.interpolation == "bicubic"
    assert InputSpec.imagenet(size=240, resize_size=240).resize_size == 240


def test_imagenet_spec_round_trips_through_json():
    spec = InputSpec.imagenet()
    assert InputSpec(**json.loads(json.dumps(spec.model_dump(mode="json")))) == spec


@pytest.mark.parametrize(("fields", "message"), [
    ({"resize": "shorter_side_crop"}, "needs resize_size"),
    ({"resize": "shorter_side_crop", "resize_size": 200}, "smaller than the 224x224 crop"),
    ({"resize": "fit", "resize_size": 256}, "applies only to resize 'shorter_side_crop'"),
    ({"resize": "crop"}, "resize"),
    ({"interpolation": "nearest"}, "interpolation"),
    ({"mean": [0.5, 0.5]}, "one value per channel"),
])  # fmt: skip
def test_inconsistent_specs_are_refused(fields, message):
    base = {"channels": 3, "height": 224, "width": 224, "mean": [0.5] * 3, "std": [0.25] * 3, "invert": "never"}
    with pytest.raises(ValidationError, match=message):
        InputSpec(**{**base, **fields})


def test_an_old_bundles_spec_keeps_its_meaning():
    """model.json as 0.1 shipped it: no resize_size, no interpolation; grey, fit, auto invert, Lanczos."""
    spec = BundleMeta(**json.loads(FIXTURE.read_text())).input
    assert (spec.channels, spec.resize, spec.invert) == (1, "fit", "auto")
    assert spec.resize_size is None and spec.interpolation == "lanczos"
