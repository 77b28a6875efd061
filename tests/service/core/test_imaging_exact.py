"""service.core.imaging's answers, exactly: the message of each refusal (what a client reads), the formats
outside the list, a zero-sized image, the smallest images that pass, and the page's PNG."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from rbn.contract.bundle import InputSpec
from service.core import imaging
from service.core.errors import CorruptImage, EmptyBody, TooManyPixels, UndecodableImage
from service.core.imaging import decode, open_image, render, to_png

SPEC = InputSpec(channels=1, height=4, width=4, mean=[0.0], std=[1.0], invert="never")


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, value: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), value).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_empty_body_says_so():
    with pytest.raises(EmptyBody) as caught:
        open_image(b"", 100)
    assert caught.value.message == "empty image: the request carries no bytes"


def test_a_format_outside_the_list_is_not_identified():
    """A binary PGM Pillow reads well (P5, 2x2): not one of ours, so 415 with the list of ours."""
    pgm = b"P5\n2 2\n255\n\x01\x02\x03\x04"
    assert Image.open(io.BytesIO(pgm)).format == "PPM"  # Pillow itself would open it
    with pytest.raises(UndecodableImage) as caught:
        open_image(pgm, 100)
    assert caught.value.message == "cannot identify an image in the data; send JPEG, PNG, WebP, BMP, GIF or TIFF"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillows_own_bomb_guard_is_a_pixel_refusal_naming_our_limit():
    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")
    with pytest.raises(TooManyPixels) as caught:  # 4e8 pixels: past twice Pillow's MAX_IMAGE_PIXELS
        open_image(header, 1000)
    assert caught.value.message.startswith("image refused before decoding: the limit is 1000 pixels (Image size (")


def test_a_broken_header_is_a_corrupt_image_naming_the_cause():
    truncated = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", b"\0\0\0\1\0")  # an IHDR of 5 bytes, not 13
    with pytest.raises(CorruptImage) as caught:
        open_image(truncated, 100)
    assert caught.value.message == "cannot read the image header: Truncated IHDR chunk"


def test_too_many_pixels_names_the_size_and_the_limit():
    with pytest.raises(TooManyPixels) as caught:
        open_image(png(3, 5), 14)
    assert caught.value.message == "image is 3x5 = 15 pixels; the limit is 14"


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (5, 1)])
def test_one_pixel_wide_or_high_is_an_image(size):
    assert open_image(png(*size), 5).size == size
    out = decode(png(*size, value=90), SPEC, 5)
    assert out.shape == (1, 4, 4) and (out == 90).all()  # fit: a uniform image pads with its own colour


@pytest.mark.parametrize("size", [(0, 5), (5, 0), (0, 0)])
def test_an_image_without_pixels_is_corrupt(monkeypatch, size):
    """Pillow refuses a zero side itself when it reads a header; the guard stands behind it for a decoder
    that would not: an image object of that size is refused."""

    class Empty:
        def __init__(self) -> None:
            self.size = size

    monkeypatch.setattr(imaging.Image, "open", lambda *a, **k: Empty())
    with pytest.raises(CorruptImage) as caught:
        open_image(b"anything", 100)
    assert caught.value.message == f"image has no pixels ({size[0]}x{size[1]})"


def test_undecodable_pixel_data_is_a_corrupt_image_naming_the_format():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    raw = buffer.getvalue()
    image = open_image(raw[: len(raw) // 2], 10**6)  # the header is whole, the data is not
    with pytest.raises(CorruptImage) as caught:
        render(image, SPEC)
    assert caught.value.message.startswith("cannot decode the image (PNG): ")
    assert len(caught.value.message) > len("cannot decode the image (PNG): ")  # with Pillow's reason


def idat(data: bytes) -> bytes:
    """The first IDAT chunk's payload (a zlib stream) of a PNG."""
    pos = 8
    while True:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            return data[pos + 8 : pos + 8 + length]
        pos += 12 + length


def test_to_png_of_one_channel_is_a_grey_png():
    x = np.arange(12, dtype=np.uint8).reshape(1, 3, 4) * 20
    raw = to_png(x)
    back = Image.open(io.BytesIO(raw))
    assert back.format == "PNG" and back.mode == "L" and back.size == (4, 3)
    np.testing.assert_array_equal(np.asarray(back), x[0])
    # zlib header 0x78 0x01: FLEVEL 0, the fastest compression (compress_level=1)
    assert idat(raw)[:2] == b"\x78\x01"


def test_to_png_of_three_channels_is_an_rgb_png_channels_last():
    x = np.arange(36, dtype=np.uint8).reshape(3, 3, 4) * 7
    raw = to_png(x)
    back = Image.open(io.BytesIO(raw))
    assert back.format == "PNG" and back.mode == "RGB" and back.size == (4, 3)
    np.testing.assert_array_equal(np.asarray(back), x.transpose(1, 2, 0))
    assert back.getpixel((1, 0)) == (7, 7 * 13, 7 * 25)  # x[:, 0, 1] = 1, 13, 25 times 7
    assert idat(raw)[:2] == b"\x78\x01"
