"""Per-channel normalisation against hand-computed values, with a different mean and std on every channel
(a reversed mean or std, or channels taken in another order, changes every expected number), and the
channel order of an RGB upload all the way from PNG bytes to the tensor the service feeds the graph."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rbn.contract.bundle import InputSpec
from rbn.contract.preprocess import Normalizer
from service.core.imaging import decode

MEAN, STD = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]


def spec(**extra) -> InputSpec:
    return InputSpec(name="input", channels=3, height=1, width=3, mean=MEAN, std=STD, **extra)


def test_each_channel_has_its_own_mean_and_std():
    pixels = np.array([0, 51, 255], np.uint8)[None, None, None, :].repeat(3, axis=1)  # (1, 3, 1, 3)
    out = Normalizer(spec())(pixels)
    # by hand, (p / 255 - mean_c) / std_c with p / 255 = 0, 0.2, 1:
    expected = np.array([[-0.5, 0.5, 4.5],     # channel 0: (0 - .1)/.2, (.2 - .1)/.2, (1 - .1)/.2
                         [-2.0, -1.2, 2.0],    # channel 1: (0 - .5)/.25, (.2 - .5)/.25, (1 - .5)/.25
                         [-1.8, -1.4, 0.2]],   # channel 2: (0 - .9)/.5, (.2 - .9)/.5, (1 - .9)/.5
                        np.float32)
    assert out.dtype == np.float32 and out.shape == (1, 3, 1, 3)
    np.testing.assert_allclose(out[0, :, 0, :], expected, atol=1e-6)


def test_the_input_array_is_not_changed():
    pixels = np.full((2, 3, 1, 1), 51, np.uint8)
    Normalizer(spec())(pixels)
    assert (pixels == 51).all()


def test_an_rgb_upload_keeps_its_channel_order_to_the_tensor():
    image = Image.new("RGB", (3, 1))
    image.putpixel((0, 0), (255, 0, 0))    # red
    image.putpixel((1, 0), (0, 255, 0))    # green
    image.putpixel((2, 0), (0, 0, 255))    # blue
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    pixels = decode(buffer.getvalue(), spec(resize="stretch", invert="never"), 1000)
    assert pixels.shape == (3, 1, 3)
    np.testing.assert_array_equal(pixels[:, 0, :], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    x = Normalizer(spec())(pixels[None])[0, :, 0, :]
    np.testing.assert_allclose(x, [[4.5, -0.5, -0.5],    # R: 1 where the pixel is red, else 0
                                   [-2.0, 2.0, -2.0],    # G
                                   [-1.8, -1.8, 0.2]],   # B
                               atol=1e-6)
