"""rbn.contract.preprocess, pixel by pixel: tiny images whose resized, padded, cropped, inverted or
converted result is worked out by hand in the test (Pillow's bilinear filter is a triangle: upscaling
by 2 puts each output pixel at 1/4 and 3/4 between two input pixels), or, for the reducing gap and the
crop's region, Pillow's own resize called directly with the arguments the docstrings name. Never the
function under test as its own oracle."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rbn.contract.bundle import InputSpec
from rbn.contract.preprocess import _border_mean, _to_uint8, border_values, draft_size, prepare, resize, to_mode

BILINEAR = Image.Resampling.BILINEAR
ROW = [0, 40, 200, 100]
# ROW upscaled 4 -> 8 by the triangle filter: the ends copy, the rest are 3/4 + 1/4 mixes of neighbours
ROW_X2 = [0, 10, 30, 80, 160, 175, 125, 100]  # 0.75*0+0.25*40, 0.25*0+0.75*40, 0.75*40+0.25*200, ...


def spec(channels: int = 1, height: int = 8, width: int = 8, **update) -> InputSpec:
    fields = {"channels": channels, "height": height, "width": width, "mean": [0.0] * channels,
              "std": [1.0] * channels, "interpolation": "bilinear", "invert": "never", **update}
    return InputSpec(**fields)


def grey(rows) -> Image.Image:
    return Image.fromarray(np.array(rows, np.uint8))


def save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


# --- draft size --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(30, 50), (50, 30)])
def test_draft_size_for_fit_and_stretch_is_the_larger_input_side(height, width):
    assert draft_size(spec(height=height, width=width)) == (50, 50)
    assert draft_size(spec(height=height, width=width, resize="stretch")) == (50, 50)
    assert draft_size(spec(height=height, width=width, resize="shorter_side_crop", resize_size=60)) == (60, 60)


def test_a_grey_spec_decodes_a_colour_jpeg_as_grey_at_a_reduced_scale():
    photo = Image.new("RGB", (800, 640), (90, 160, 30))
    image = Image.open(io.BytesIO(save(photo, "JPEG", quality=90)))
    out = prepare(image, spec(height=28, width=28))
    assert image.mode == "L" and image.size == (100, 80)  # libjpeg decoded grey, 1/8: 800/8 = 100 >= 28
    # fit: 100x80 -> 28x22 inside 28x28; grey of (90, 160, 30) = 0.299*90 + 0.587*160 + 0.114*30 = 124.2
    assert out.shape == (1, 28, 28) and out.dtype == np.uint8
    assert abs(int(out[0, 14, 14]) - 124) <= 2


def test_a_colour_spec_keeps_a_colour_jpeg_in_colour():
    image = Image.open(io.BytesIO(save(Image.new("RGB", (800, 640), (90, 160, 30)), "JPEG", quality=90)))
    out = prepare(image, spec(channels=3, height=28, width=28))
    assert image.mode == "RGB" and image.size == (100, 80)
    assert np.abs(out[:, 14, 14].astype(int) - [90, 160, 30]).max() <= 3


def test_a_multi_picture_jpeg_is_decoded_at_a_reduced_scale_too():
    photo = Image.new("RGB", (800, 640), (200, 30, 30))
    raw = save(photo, "MPO", save_all=True, append_images=[photo], quality=90)
    image = Image.open(io.BytesIO(raw))
    assert image.format == "MPO"
    prepare(image, spec(channels=3, height=28, width=28))
    assert image.size == (100, 80)


# --- inversion and layout ----------------------------------------------------------------------------


def test_always_inverts_and_never_does_not():
    x = np.array([[0, 10], [200, 255]], np.uint8)
    np.testing.assert_array_equal(prepare(grey(x), spec(height=2, width=2, invert="always"))[0], 255 - x)
    np.testing.assert_array_equal(prepare(grey(x), spec(height=2, width=2, invert="never"))[0], x)


@pytest.mark.parametrize(("value", "inverted"), [(127, False), (128, True)])
def test_auto_inverts_a_border_brighter_than_mid_grey(value, inverted):
    x = np.full((4, 4), value, np.uint8)
    x[1:3, 1:3] = 7  # the inside does not count
    out = prepare(grey(x), spec(height=4, width=4, invert="auto"))[0]
    np.testing.assert_array_equal(out, 255 - x if inverted else x)


def test_auto_does_not_invert_a_border_of_exactly_mid_grey():
    """The border ring's mean is exactly 127.5 (half 127, half 128): not brighter than mid-grey."""
    x = np.empty((4, 4), np.uint8)
    x[:, :2], x[:, 2:] = 127, 128  # ring: 6 values of 127, 6 of 128
    np.testing.assert_array_equal(prepare(grey(x), spec(height=4, width=4, invert="auto"))[0], x)


def test_grey_is_one_channel_colour_is_channels_first():
    x = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    out = prepare(grey(x), spec(height=2, width=3))
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], x)
    rgb = np.stack([x, x + 1, x + 2], axis=-1)
    out = prepare(Image.fromarray(rgb), spec(channels=3, height=2, width=3))
    assert out.shape == (3, 2, 3) and out.flags.c_contiguous
    for c in range(3):
        np.testing.assert_array_equal(out[c], x + c)


# --- border ----------------------------------------------------------------------------------------


def test_border_values_are_the_outer_ring_in_order():
    x = np.arange(20, dtype=np.uint8).reshape(4, 5)
    # top row, bottom row, left column without its ends, right column without its ends
    expected = [0, 1, 2, 3, 4, 15, 16, 17, 18, 19, 5, 10, 9, 14]
    ring = border_values(x)
    assert ring.dtype == np.float32
    np.testing.assert_array_equal(ring, expected)
    assert _border_mean(x) == pytest.approx(sum(expected) / 14)
    rgb = np.stack([x, 2 * x], axis=-1)
    np.testing.assert_array_equal(border_values(rgb), np.stack([expected, [2 * v for v in expected]], axis=-1))


# --- resize: stretch ---------------------------------------------------------------------------------


def test_stretch_upscales_with_the_triangle_filter():
    out = prepare(grey([ROW, ROW]), spec(height=2, width=8, resize="stretch"))[0]
    np.testing.assert_array_equal(out, [ROW_X2, ROW_X2])


def test_an_image_of_the_input_size_is_left_as_it_is():
    x = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    for how in ("fit", "stretch"):
        np.testing.assert_array_equal(prepare(grey(x), spec(resize=how))[0], x)


# --- resize: fit -----------------------------------------------------------------------------------


def test_fit_a_wide_image_is_scaled_and_padded_above_and_below():
    """4x2 -> scale 2 -> 8x4 (rows ROW_X2), centred at row (8 - 4) // 2 = 2; the padding is the rounded
    mean of the resized image's border ring: (2 * 680 + 0 + 0 + 100 + 100) / 20 = 78."""
    out = prepare(grey([ROW, ROW]), spec())[0]
    expected = np.full((8, 8), 78, np.uint8)
    expected[2:6] = ROW_X2
    np.testing.assert_array_equal(out, expected)


def test_fit_a_tall_image_is_scaled_and_padded_left_and_right():
    column = np.array([ROW, ROW]).T  # 2 wide, 4 high, each row one value
    out = prepare(grey(column), spec())[0]
    expected = np.full((8, 8), 78, np.uint8)  # (4*0 + 4*100 + 2 * (10+30+80+160+175+125)) / 20 = 78
    expected[:, 2:6] = np.array(ROW_X2)[:, None]
    np.testing.assert_array_equal(out, expected)


def test_fit_into_a_non_square_input():
    """4x2 into 8 wide x 7 high: scale min(8/4, 7/2) = 2, 8x4 at row (7 - 4) // 2 = 1."""
    out = prepare(grey([ROW, ROW]), spec(height=7, width=8))[0]
    expected = np.full((7, 8), 78, np.uint8)
    expected[1:5] = ROW_X2
    np.testing.assert_array_equal(out, expected)
    tall = prepare(grey(np.array([ROW, ROW]).T), spec(height=8, width=7))[0]  # 2x4 into 7x8: 4x8 at column 1
    expected = np.full((8, 7), 78, np.uint8)
    expected[:, 1:5] = np.array(ROW_X2)[:, None]
    np.testing.assert_array_equal(tall, expected)


def test_fit_keeps_at_least_one_row():
    """40x1 -> scale 0.2 -> 8x1 (round(0.2) = 0, kept at 1), at row (8 - 1) // 2 = 3. Shrinking by 5 the
    triangle is 5 pixels wide: output 3 (centre 17.5) weighs input 13..21 by .2 .4 .6 .8 1 .8 .6 .4 .2 (sum 5),
    and the 200s at 20 and 21 give 200 * .6 / 5 = 24; output 4 is its mirror, 176."""
    row = np.zeros((1, 40), np.uint8)
    row[0, 20:] = 200
    out = prepare(grey(row), spec())[0]
    expected = np.full((8, 8), 100, np.uint8)  # a one-row ring counts that row twice: 2 * 800 / 16 = 100
    expected[3] = [0, 0, 0, 24, 176, 200, 200, 200]
    np.testing.assert_array_equal(out, expected)


def test_fit_keeps_at_least_one_column():
    """1x40 -> scale 0.2 -> 1x8 (round(0.2) = 0, kept at 1), at column (8 - 1) // 2 = 3: the transpose of the above."""
    column = np.zeros((40, 1), np.uint8)
    column[20:, 0] = 200
    out = prepare(grey(column), spec())[0]
    expected = np.full((8, 8), 100, np.uint8)
    expected[:, 3] = [0, 0, 0, 24, 176, 200, 200, 200]
    np.testing.assert_array_equal(out, expected)


def test_fit_pads_each_colour_channel_with_its_own_border_mean():
    red = [ROW, ROW]  # resized ring mean 78, as above
    green = [[200, 200, 0, 0]] * 2  # resized row 200 200 200 150 50 0 0 0: (2 * 800 + 2 * 200) / 20 = 100
    blue = [[60] * 4] * 2
    image = Image.fromarray(np.stack([np.array(c, np.uint8) for c in (red, green, blue)], axis=-1))
    out = prepare(image, spec(channels=3))
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8
    expected = np.empty((3, 8, 8), np.uint8)
    expected[0], expected[1], expected[2] = 78, 100, 60
    expected[0, 2:6] = ROW_X2
    expected[1, 2:6] = [200, 200, 200, 150, 50, 0, 0, 0]
    np.testing.assert_array_equal(out, expected)


# --- the reducing gap and the crop's region ------------------------------------------------------------


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8))


def gap_resize(image: Image.Image, size: tuple[int, int], **kw) -> np.ndarray:
    """Pillow's resize as the module's docstring describes it: bilinear, reducing gap 3 (a box reduce first)."""
    reference = np.asarray(image.resize(size, BILINEAR, reducing_gap=3.0, **kw))
    plain = np.asarray(image.resize(size, BILINEAR, **kw))
    assert not np.array_equal(reference, plain)  # the gap matters for this image: the test can tell
    return reference


def test_stretch_shrinks_with_a_reducing_gap_of_3():
    image = noise(96, 96)
    np.testing.assert_array_equal(prepare(image, spec(resize="stretch"))[0], gap_resize(image, (8, 8)))


def test_fit_shrinks_with_a_reducing_gap_of_3():
    image = noise(48, 96)
    out = prepare(image, spec())[0]  # 96x48 -> 8x4, rows 2..5
    np.testing.assert_array_equal(out[2:6], gap_resize(image, (8, 4)))


def test_shorter_side_crop_shrinks_with_a_reducing_gap_of_3():
    image = noise(150, 200)
    # shorter side 150 -> 16, longer int(16 * 200 / 150) = 21; crop 8x8 at (round(6.5), 4) = (6, 4)
    out = prepare(image, spec(resize="shorter_side_crop", resize_size=16))[0]
    np.testing.assert_array_equal(out, gap_resize(image, (21, 16))[4:12, 6:14])


def test_a_crop_by_region_shrinks_with_a_reducing_gap_of_3():
    image = noise(48, 48 * 17)  # 17:1: resized 136x8 would pass 16 * 8 = 128, so only the crop's region
    out = prepare(image, spec(resize="shorter_side_crop", resize_size=8))[0]
    # the crop is columns 64..71 of 136 (round((136 - 8) / 2)); 816 / 136 = 48 / 8 = 6 input pixels each
    np.testing.assert_array_equal(out, gap_resize(image, (8, 8), box=(384, 0, 432, 48)))


def test_at_exactly_16_to_1_the_whole_image_is_resized_then_cropped():
    """1600x100 for a shorter side of 73: int(73 * 16) = 1168 = 16 * 73, not beyond: the full resize then
    the crop (columns round(552.0) = 552.., rows round(4.5) = 4..), exactly; the region's resample differs."""
    image = noise(100, 1600, seed=1)
    out = prepare(image, spec(height=64, width=64, resize="shorter_side_crop", resize_size=73))[0]
    full = np.asarray(image.resize((1168, 73), BILINEAR))
    np.testing.assert_array_equal(out, full[4:68, 552:616])


# --- modes -------------------------------------------------------------------------------------------


def test_float_images_round_and_clip_to_0_255():
    values = np.array([[-5.0, 0.4, 0.6, 2.5, 254.6, 300.0]], np.float32)
    expected = [[0, 0, 1, 2, 255, 255]]  # rint rounds halves to even: 2.5 -> 2
    out = _to_uint8(values, "F")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(np.asarray(to_mode(Image.fromarray(values, "F"), 1)), expected)


def test_16_and_32_bit_images_scale_0_65535_to_0_255():
    values = np.array([[-1000, 0, 128, 129, 257 * 40, 65535, 70000]], np.int32)
    expected = [[0, 0, 0, 1, 40, 255, 255]]  # / 257, rounded: 128/257 = 0.498, 129/257 = 0.502
    out = _to_uint8(values, "I")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(np.asarray(to_mode(Image.fromarray(values, "I"), 1)), expected)
    sixteen = Image.fromarray(np.array([[0, 129, 257 * 40, 65535]], np.uint16))
    assert sixteen.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(to_mode(sixteen, 1)), [[0, 1, 40, 255]])


def test_bilevel_images_become_0_and_255():
    bits = Image.fromarray(np.array([[True, False, True]]))
    assert bits.mode == "1"
    out = to_mode(bits, 1)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), [[255, 0, 255]])
    np.testing.assert_array_equal(np.asarray(to_mode(bits, 3)), [[[255] * 3, [0] * 3, [255] * 3]])


def test_palette_images_become_their_colours():
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 20, 200, 60] + [0] * 762)
    palette.putpixel((1, 0), 1)
    out = to_mode(palette, 3)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), [[[0, 0, 0], [20, 200, 60]]])
    # grey of (20, 200, 60) = (20 * 19595 + 200 * 38470 + 60 * 7471 + 32768) >> 16 = 130 (Pillow's fixed point)
    np.testing.assert_array_equal(np.asarray(to_mode(palette, 1)), [[0, 130]])


def test_transparency_becomes_white_for_grey_and_colour():
    la = Image.fromarray(np.array([[[10, 0], [10, 255], [10, 128]]], np.uint8), "LA")
    # alpha 128 on white: 10 * 128/255 + 255 * 127/255 = 132.0 (Pillow rounds its blend)
    grey_out = np.asarray(to_mode(la, 1)).astype(int)
    assert grey_out[0, :2].tolist() == [255, 10] and abs(grey_out[0, 2] - 132) <= 1
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], np.uint8), "RGBA")
    np.testing.assert_array_equal(np.asarray(to_mode(rgba, 3)), [[[255, 255, 255], [10, 20, 30]]])
    np.testing.assert_array_equal(np.asarray(to_mode(rgba, 1)), [[255, 18]])  # (10*19595 + 20*38470 + 30*7471 + 32768) >> 16 = 18


def test_alpha_is_kept_for_alpha_inputs():
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0], [40, 50, 60, 128]]], np.uint8), "RGBA")
    out = to_mode(rgba, 4)
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(rgba))
    la = Image.fromarray(np.array([[[10, 0], [90, 128]]], np.uint8), "LA")
    out = to_mode(la, 2)
    assert out.mode == "LA"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(la))
    opaque = to_mode(Image.fromarray(np.array([[7, 9]], np.uint8)), 2)  # grey gains an opaque alpha
    assert opaque.mode == "LA"
    np.testing.assert_array_equal(np.asarray(opaque), [[[7, 255], [9, 255]]])
    assert to_mode(Image.new("RGB", (1, 1), (1, 2, 3)), 4).getpixel((0, 0)) == (1, 2, 3, 255)


def test_other_colour_spaces_go_through_rgb():
    """LAB has no direct conversion to grey in Pillow: it must go through RGB first."""
    lab = Image.new("LAB", (2, 1), (100, 128, 128))  # L* = 100/255 of the way, no colour: a mid grey
    via_rgb = lab.convert("RGB")
    out = to_mode(lab, 1)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(via_rgb.convert("L")))
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert to_mode(cmyk, 3).getpixel((0, 0)) == (255, 0, 0)
    assert to_mode(cmyk, 1).getpixel((0, 0)) == 76  # (255 * 19595 + 32768) >> 16


def test_resize_returns_the_geometry_for_each_channel_count():
    """resize() itself, on RGBA: four channels padded the same way (each with its own border mean)."""
    rgba = np.stack([np.array([ROW, ROW], np.uint8)] * 3 + [np.full((2, 4), 255, np.uint8)], axis=-1)
    out = resize(Image.fromarray(rgba, "RGBA"), spec(channels=4))
    assert out.shape == (8, 8, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 3], 255)
    np.testing.assert_array_equal(out[2:6, :, 0], [ROW_X2] * 4)
    np.testing.assert_array_equal(out[:2, :, 0], 78)
