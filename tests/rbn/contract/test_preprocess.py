"""rbn.contract.preprocess for photos (the ImageNet convention), against references computed by hand
or by Pillow's plain full decode, never by the function under test."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from rbn.contract.bundle import InputSpec
from rbn.contract.preprocess import Normalizer, crop_geometry, draft_size, prepare

SPEC64 = InputSpec.imagenet(size=64)  # resize_size 73, bilinear, ImageNet mean/std


def save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def reopen(raw: bytes) -> Image.Image:
    return Image.open(io.BytesIO(raw))


def test_normalizer_uses_each_channels_own_mean_and_std():
    spec = InputSpec.imagenet()
    pixels = np.array([255, 0, 51], np.uint8).reshape(1, 3, 1, 1) * np.ones((1, 1, 2, 2), np.uint8)
    out = Normalizer(spec)(pixels)
    # by hand: (255/255 - 0.485) / 0.229, (0 - 0.456) / 0.224, (51/255 - 0.406) / 0.225
    expected = np.array([2.2489083, -2.0357143, -0.9155556], np.float32)
    assert out.dtype == np.float32 and out.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(out[0, :, 0, 0], expected, atol=2e-6)
    np.testing.assert_allclose(out[0, :, 1, 1], expected, atol=2e-6)


@pytest.mark.parametrize(("size", "resize_size", "crop", "expected"), [
    ((500, 375), 256, (224, 224), ((341, 256), (58, 16))),  # int(256*500/375) = 341; round(58.5) = 58
    ((375, 500), 256, (224, 224), ((256, 341), (16, 58))),
    ((451, 300), 73, (64, 64), ((109, 73), (22, 4))),  # round(22.5) = 22, round(4.5) = 4 (to even, as torchvision)
    ((300, 300), 256, (224, 224), ((256, 256), (16, 16))),
    ((4000, 3000), 256, (224, 224), ((341, 256), (58, 16))),
    ((100, 60), 256, (224, 200), ((426, 256), (101, 28))),  # upscaling; crop 224 wide, 200 high
])  # fmt: skip
def test_crop_geometry_is_torchvisions_resize_then_center_crop(size, resize_size, crop, expected):
    assert crop_geometry(*size, resize_size, crop) == expected


def test_shorter_side_crop_equals_a_plain_pillow_reference():
    photo = Image.fromarray(data.chelsea())  # 451x300 RGB
    out = prepare(reopen(save(photo, "PNG")), SPEC64)
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    ref = np.asarray(photo.resize((109, 73), Image.Resampling.BILINEAR))[4:68, 22:86].transpose(2, 0, 1)
    np.testing.assert_array_equal(out, ref)
    bicubic = prepare(reopen(save(photo, "PNG")), InputSpec.imagenet(size=64, interpolation="bicubic"))
    ref = np.asarray(photo.resize((109, 73), Image.Resampling.BICUBIC))[4:68, 22:86].transpose(2, 0, 1)
    np.testing.assert_array_equal(bicubic, ref)


def test_a_12_megapixel_jpeg_is_decoded_at_one_eighth_and_stays_close_to_a_full_decode():
    photo = Image.fromarray(data.chelsea()).resize((4000, 3000), Image.Resampling.BICUBIC)
    raw = save(photo, "JPEG", quality=90)
    spec = InputSpec.imagenet()  # 256 -> 224
    assert draft_size(spec) == (256, 256)
    image = reopen(raw)
    out = prepare(image, spec)
    assert image.size == (500, 375)  # libjpeg decoded 1/8 of each side: 4000/8 >= 256 and 3000/8 >= 256
    full = reopen(raw).convert("RGB").resize((341, 256), Image.Resampling.BILINEAR)
    ref = np.asarray(full)[16:240, 58:282].transpose(2, 0, 1).astype(int)
    diff = np.abs(out.astype(int) - ref)
    # measured: mean 0.42, max 6 grey levels (DCT-domain scaling vs decode-then-filter)
    assert diff.mean() < 1.0 and diff.max() <= 12


def test_draft_never_goes_below_the_shorter_side_needed():
    photo = Image.fromarray(data.chelsea()).resize((2000, 520), Image.Resampling.BICUBIC)
    image = reopen(save(photo, "JPEG", quality=90))
    prepare(image, InputSpec.imagenet())  # 520 / 256 = 2.03: only half scale keeps the shorter side >= 256
    assert image.size == (1000, 260)


def test_exif_orientation_applies_before_the_crop():
    tall = np.zeros((400, 200, 3), np.uint8)
    tall[150:250] = (250, 10, 10)  # a horizontal red band across the middle of a portrait photo
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(tall, 1)))
    out = prepare(reopen(save(stored, "JPEG", quality=95, exif=exif)), InputSpec.imagenet(size=64))
    # portrait 200x400 -> 73x146, crop rows 41..104: the band (rows 55..91) is crop rows 14..50, full width;
    # unrotated, it would be a vertical band through every row
    assert out.shape == (3, 64, 64)
    assert out[0, 32].min() > 200 and out[1, 32].max() < 60  # red across the whole middle row
    assert out[0, 3].max() < 40 and out[0, 60].max() < 40  # black above and below


@pytest.mark.parametrize(("make", "expected"), [
    (lambda: Image.new("L", (80, 80), 100), (100, 100, 100)),  # grey -> three equal channels
    (lambda: Image.new("CMYK", (80, 80), (0, 255, 255, 0)), (255, 0, 0)),  # CMYK pure red
    (lambda: Image.new("RGBA", (80, 80), (10, 20, 30, 0)), (255, 255, 255)),  # transparent -> white
    (lambda: Image.new("LA", (80, 80), (0, 255)), (0, 0, 0)),  # opaque black, grey with alpha
    (lambda: Image.new("I;16", (80, 80), 257 * 40), (40, 40, 40)),  # 16-bit grey: 0..65535 -> 0..255
])  # fmt: skip
def test_modes_become_rgb(make, expected):
    out = prepare(make(), InputSpec.imagenet(size=64))
    assert out.shape == (3, 64, 64)
    assert [int(v) for v in out[:, 32, 32]] == list(expected)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_cmyk_and_palette_files_decode_to_rgb(fmt):
    if fmt == "JPEG":
        raw = save(Image.new("CMYK", (120, 90), (0, 255, 255, 0)), "JPEG", quality=95)
        expected = np.array([255, 0, 0])
    else:
        palette = Image.new("P", (120, 90), 1)
        palette.putpalette([0, 0, 0, 20, 200, 60] + [0] * 762)
        raw = save(palette, "PNG")
        expected = np.array([20, 200, 60])
    out = prepare(reopen(raw), InputSpec.imagenet(size=64))
    assert np.abs(out[:, 32, 32].astype(int) - expected).max() <= 2


def test_palette_transparency_is_white():
    palette = Image.new("P", (90, 90), 0)
    palette.putpalette([0, 0, 0, 20, 200, 60] + [0] * 762)
    palette.paste(1, (0, 0, 45, 90))
    out = prepare(reopen(save(palette, "PNG", transparency=0)), InputSpec.imagenet(size=64))
    assert [int(v) for v in out[:, 32, 5]] == [20, 200, 60]
    assert [int(v) for v in out[:, 32, 60]] == [255, 255, 255]


def test_an_extreme_strip_is_cropped_without_resizing_it_whole():
    """A 2 x 500 000 strip (1 MP, within any pixel limit) would be resized to 256 x 64 000 000 (49 GB) before
    the crop: only the crop's region is resampled. Rows carry their position: the crop shows the middle."""
    rows = (np.arange(500_000) * 256 // 500_000).astype(np.uint8)
    strip = Image.fromarray(np.repeat(rows[:, None], 2, axis=1))
    out = prepare(strip, InputSpec.imagenet())
    assert out.shape == (3, 224, 224)
    assert abs(float(out.mean()) - 128) <= 1 and int(out.max()) - int(out.min()) <= 1


@pytest.mark.parametrize(("width", "exact"), [(16 * 146, True), (17 * 146, False)])
def test_panoramas_up_to_16_to_1_are_resized_whole_wider_ones_by_region(width, exact):
    """146 high: halved to 73 (the longer side to int(73 * width / 146)), then the centre 64x64. Up to
    16:1 exactly as a plain resize and crop; wider, by region, within two grey levels of it."""
    pano = Image.fromarray(data.chelsea()).resize((width, 146), Image.Resampling.BICUBIC)
    out = prepare(pano, SPEC64).astype(int)
    scaled = int(73 * width / 146)
    left = int(round((scaled - 64) / 2.0))
    ref = np.asarray(pano.resize((scaled, 73), Image.Resampling.BILINEAR))[4:68, left : left + 64]
    ref = ref.transpose(2, 0, 1).astype(int)
    if exact:
        np.testing.assert_array_equal(out, ref)
    else:
        assert np.abs(out - ref).max() <= 2
