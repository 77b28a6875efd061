"""Decoding and preprocessing, without a server: formats, modes, orientation, fit, invert, limits."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from tests.service.svc_support import SAMPLES, encode

from rbn.contract.bundle import InputSpec
from rbn.experiments.data import MEAN, STD, normalize
from service.core.errors import CorruptImage, EmptyBody, TooManyPixels, UndecodableImage
from service.core.imaging import Normalizer, decode, open_image, render

SPEC = InputSpec(channels=1, height=28, width=28, mean=[MEAN], std=[STD])
RGB_SPEC = InputSpec(channels=3, height=16, width=16, mean=[0.5] * 3, std=[0.25] * 3, invert="never")


def digit(h: int = 28, w: int = 28) -> np.ndarray:
    """A light asymmetric shape on a dark background (Fashion-MNIST style)."""
    x = np.zeros((h, w), np.uint8)
    x[h // 4 : 3 * h // 4, w // 3 : w // 2] = 220
    x[h // 4 : h // 3, w // 2 : 3 * w // 4] = 160
    return x


def save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_fashion_mnist_png_passes_through_unchanged():
    x = digit()
    out = decode(encode(x), SPEC, 10**6)
    assert out.dtype == np.uint8 and out.shape == (1, 28, 28)
    np.testing.assert_array_equal(out[0], x)


def test_normalize_matches_training():
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(Normalizer(SPEC)(x[:, None]), normalize(x), rtol=1e-5, atol=1e-5)
    rgb = Normalizer(RGB_SPEC)(np.full((1, 3, 2, 2), 255, np.uint8))
    np.testing.assert_allclose(rgb, 2.0)


def test_light_background_photo_is_inverted_dark_is_not():
    x = digit()
    photo = Image.fromarray(255 - x).convert("RGB").resize((224, 224))  # dark object on white, RGB
    out = decode(save(photo, "PNG"), SPEC, 10**6)[0].astype(int)
    assert np.abs(out - x).mean() < 8  # back to light-on-dark at 28x28
    never = decode(save(photo, "PNG"), SPEC.model_copy(update={"invert": "never"}), 10**6)[0].astype(int)
    assert np.abs(never - (255 - x)).mean() < 8
    always = decode(encode(x), SPEC.model_copy(update={"invert": "always"}), 10**6)[0]
    np.testing.assert_array_equal(always, 255 - x)


def test_fit_keeps_aspect_and_pads_with_the_border():
    wide = np.zeros((20, 80), np.uint8)
    wide[5:15, 10:70] = 200
    out = decode(encode(wide), SPEC, 10**6)[0]
    assert out.shape == (28, 28)
    assert (out[:10] == 0).all() and (out[-10:] == 0).all()  # letterbox rows filled with the (black) border
    assert out[14].max() > 100  # content in the middle band
    stretched = decode(encode(wide), SPEC.model_copy(update={"resize": "stretch"}), 10**6)[0]
    assert stretched[4:24].max() > 100 and stretched[:2].max() < 60


def test_exif_orientation_is_applied():
    x = np.zeros((40, 20), np.uint8)
    x[:10] = 255  # bright band at the top of a tall image
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90° clockwise for display
    stored = Image.fromarray(np.rot90(x, 1))  # what a camera writes for orientation 6
    out = decode(save(stored, "JPEG", exif=exif, quality=95), SPEC.model_copy(update={"invert": "never"}), 10**6)[0]
    plain = decode(encode(x), SPEC.model_copy(update={"invert": "never"}), 10**6)[0]
    assert np.abs(out.astype(int) - plain.astype(int)).mean() < 10


def test_modes_and_formats_agree():
    """The same picture as L, RGB, RGBA (opaque), P, CMYK, 16-bit, BMP, WebP, GIF and TIFF decodes alike."""
    x = digit(32, 32)
    rgb = Image.fromarray(x).convert("RGB")
    reference = decode(encode(x), SPEC, 10**6)[0].astype(int)
    variants = {
        "rgb": save(rgb, "PNG"),
        "rgba": save(rgb.convert("RGBA"), "PNG"),
        "palette": save(rgb.convert("P"), "PNG"),
        "cmyk-jpeg": save(rgb.convert("CMYK"), "JPEG", quality=98),
        "i16": save(Image.fromarray(x.astype(np.uint16) * 257), "PNG"),
        "i32": save(Image.fromarray(x.astype(np.int32) * 257), "TIFF"),
        "bilevel": save(Image.fromarray(x > 100), "PNG"),
        "bmp": save(rgb, "BMP"),
        "webp": save(rgb, "WEBP", lossless=True),
        "gif": save(rgb.convert("P"), "GIF"),
        "tiff": save(rgb, "TIFF"),
    }
    for name, data in variants.items():
        out = decode(data, SPEC, 10**6)[0].astype(int)
        tolerance = 60 if name == "bilevel" else 6
        assert np.abs(out - reference).mean() < tolerance, name


def test_alpha_is_composited_on_white_then_auto_inverted():
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[8:20, 8:20] = (0, 0, 0, 255)  # an opaque black square on a transparent background
    out = decode(encode(rgba), SPEC, 10**6)[0]
    assert out[14, 14] == 255 and out[0, 0] == 0  # white background -> inverted to black; object light


def test_gif_first_frame():
    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)).convert("P") for v in (30, 200)]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert abs(int(decode(data, SPEC.model_copy(update={"invert": "never"}), 10**6)[0].mean()) - 30) <= 2


def test_rgb_spec_keeps_colour():
    x = np.zeros((16, 16, 3), np.uint8)
    x[..., 0] = 200
    out = decode(encode(x), RGB_SPEC, 10**6)
    assert out.shape == (3, 16, 16) and (out[0] == 200).all() and (out[1:] == 0).all()


def test_limits_and_bad_data():
    with pytest.raises(EmptyBody):
        decode(b"", SPEC, 10**6)
    with pytest.raises(UndecodableImage):
        decode(b"GIF89a-not-really" * 3 + b"\0" * 10 + b"plain text", SPEC, 10**6)
    with pytest.raises(UndecodableImage):
        decode(b"%!PS-Adobe-3.0 EPSF-3.0\n", SPEC, 10**6)  # formats outside our list are never tried
    data = encode(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    with pytest.raises(CorruptImage):
        decode(data[: len(data) // 2], SPEC, 10**6)
    with pytest.raises(TooManyPixels, match="64x64"):
        open_image(data, 64 * 64 - 1)
    assert open_image(data, 64 * 64).size == (64, 64)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_is_checked_before_decoding():
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")
    with pytest.raises(TooManyPixels, match="12000x12000"):
        open_image(bomb, 10**7)  # would need 144 MB to decode; refused from the header alone


def test_shipped_photos_come_back_close_to_the_originals():
    from rbn.experiments.data import load_split

    originals = load_split("test").images
    for entry in json.loads((SAMPLES / "photos" / "labels.json").read_text()):
        out = decode((SAMPLES / "photos" / entry["file"]).read_bytes(), SPEC, 10**7)[0].astype(int)
        original = originals[entry["index"]].astype(int)
        assert np.abs(out - original).mean() < 25, entry["file"]  # inverted back, resized, aligned


def test_render_accepts_an_opened_image():
    image = open_image(encode(digit()), 10**6)
    np.testing.assert_array_equal(render(image, SPEC)[0], digit())
