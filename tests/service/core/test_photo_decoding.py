"""The decode side for photos, without a server: a 12-MP JPEG through the Decoder (pixel limits on the
header, the pool), and /ab's server-side corruption of large images kept off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading

import numpy as np
import pytest
from PIL import Image
from skimage import data

from rbn.contract.bundle import InputSpec
from service.core.corrupting import corrupt_images
from service.core.config import Settings
from service.core.decoding import Decoder, Upload
from service.core.errors import DecodeBusy, TooManyPixels

SPEC = InputSpec.imagenet(size=224)


def jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def decoder(**settings) -> Decoder:
    return Decoder(Settings(**{"decode_threads": 1, "decode_queue_size": 4, **settings}))


def test_a_12_megapixel_jpeg_decodes_in_the_pool_at_reduced_scale():
    raw = jpeg((4000, 3000))
    d = decoder()
    try:
        out = asyncio.run(d.decode([Upload(raw)], SPEC))
        assert out.shape == (1, 3, 224, 224) and out.dtype == np.uint8
        full = Image.open(io.BytesIO(raw)).convert("RGB").resize((341, 256), Image.Resampling.BILINEAR)
        ref = np.asarray(full)[16:240, 58:282].transpose(2, 0, 1).astype(int)
        assert np.abs(out[0].astype(int) - ref).mean() < 1.0
    finally:
        d.shutdown()


def test_the_per_image_and_per_request_pixel_limits_still_hold():
    raw = jpeg((4000, 3000))
    d = decoder(max_image_pixels=11_999_999)
    try:
        with pytest.raises(TooManyPixels, match="4000x3000"):
            asyncio.run(d.decode([Upload(raw)], SPEC))
    finally:
        d.shutdown()
    d = decoder(max_request_pixels=20_000_000)
    try:
        with pytest.raises(TooManyPixels, match="together"):
            asyncio.run(d.decode([Upload(raw), Upload(raw)], SPEC))
    finally:
        d.shutdown()


@contextlib.asynccontextmanager
async def pool_held(d: Decoder):
    """The decode pool's one thread busy until the block ends."""
    release = threading.Event()
    held = asyncio.ensure_future(d.pool.run(release.wait))
    await asyncio.sleep(0.05)
    try:
        yield
    finally:
        release.set()
        await held


def test_large_images_are_corrupted_in_the_pool_small_ones_inline():
    """With the pool's one thread held and no queue, a 224-px RGB batch gets 503 decode_busy (it would
    have run in the pool); a 28x28 grey batch is corrupted inline all the same. Results equal
    corrupting.corrupt_images either way."""
    photo = np.random.default_rng(0).integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)
    small = np.random.default_rng(1).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    d = decoder(decode_queue_size=0)

    async def run() -> None:
        async with pool_held(d):
            with pytest.raises(DecodeBusy):
                await d.corrupt(photo, "fog", 3, 7)
            np.testing.assert_array_equal(await d.corrupt(small, "fog", 3, 7), corrupt_images(small, "fog", 3, 7))
        np.testing.assert_array_equal(await d.corrupt(photo, "fog", 3, 7), corrupt_images(photo, "fog", 3, 7))

    try:
        asyncio.run(run())
    finally:
        d.shutdown()


def test_a_large_photo_is_decoded_in_the_pool_a_small_one_inline():
    """With the pool's one thread held and no queue: the 12-MP JPEG gets 503 decode_busy (it needs the
    pool, for opening and decoding), a 200x150 one is decoded on the event loop all the same."""
    large, small = jpeg((4000, 3000)), jpeg((200, 150))
    d = decoder(decode_queue_size=0)

    async def run() -> None:
        async with pool_held(d):
            with pytest.raises(DecodeBusy):
                await d.decode([Upload(large)], SPEC)
            assert (await d.decode([Upload(small)], SPEC)).shape == (1, 3, 224, 224)

    try:
        asyncio.run(run())
    finally:
        d.shutdown()
