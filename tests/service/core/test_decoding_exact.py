"""service.core.decoding's paths in process: files opened and decoded in the pool's threads (no deadline),
the choice of killable processes when there is one, Pool.run, and /ab's corruption inline or in the
pool, at the exact size where it moves. References: imaging.decode and corrupting.corrupt_images called
directly, never the decoder itself."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from tests.service.asgi_app import SHIPPED

from rbn.contract.bundle import InputSpec
from service.core import imaging
from service.core.corrupting import corrupt_images
from service.core.config import Settings
from service.core.decodeproc import Processes
from service.core.decoding import Decoder, Pool, Upload
from service.core.errors import CorruptImage, DecodeBusy, TooManyPixels

SPEC = InputSpec(name="input", channels=1, height=28, width=28, mean=[0.5], std=[0.5])


def settings(**values) -> Settings:
    return Settings(model_repository=SHIPPED, **values)


def png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def run_decoder(uploads: list[Upload], **values) -> np.ndarray:
    decoder = Decoder(settings(**values))
    try:
        return asyncio.run(decoder.decode(uploads, SPEC))
    finally:
        decoder.shutdown()


def test_without_a_deadline_large_files_are_opened_and_decoded_in_the_threads():
    """inline_body_bytes 0: no file is inline; every one goes through the pool's threads (decode_timeout_s 0:
    no processes), and comes out as the plain decode does."""
    files = [png(40, 30, seed=1), png(28, 28, seed=2), png(90, 10, seed=3)]
    out = run_decoder([Upload(f) for f in files], decode_timeout_s=0.0, inline_body_bytes=0)
    assert out.shape == (3, 1, 28, 28) and out.dtype == np.uint8
    for i, data in enumerate(files):
        np.testing.assert_array_equal(out[i], imaging.decode(data, SPEC, 10**6))


def test_the_threads_check_structure_and_the_pixel_limit_before_decoding():
    chunk = struct.pack(">I4s", 3, b"tEXt") + b"k\0v" + struct.pack(">I", zlib.crc32(b"tEXtk\0v"))
    data = png(4, 4)
    flood = data[:33] + chunk * 5000 + data[33:]  # after IHDR: 5000 text chunks
    with pytest.raises(CorruptImage) as caught:
        run_decoder([Upload(flood)], decode_timeout_s=0.0, inline_body_bytes=0)
    assert caught.value.message == "image has more than 4096 PNG chunks; refused before decoding"
    with pytest.raises(TooManyPixels) as caught:
        run_decoder([Upload(png(10, 10))], decode_timeout_s=0.0, inline_body_bytes=0, max_image_pixels=99)
    assert caught.value.message == "image is 10x10 = 100 pixels; the limit is 99"
    assert run_decoder([Upload(png(10, 10))], decode_timeout_s=0.0, inline_body_bytes=0,
                       max_image_pixels=100).shape == (1, 1, 28, 28)


def test_a_decode_deadline_puts_the_pools_work_in_processes_one_per_thread():
    decoder = Decoder(settings(decode_timeout_s=10.0, decode_threads=3))
    try:
        assert isinstance(decoder.processes, Processes) and decoder.processes.count == 3
    finally:
        decoder.shutdown()
    decoder = Decoder(settings(decode_timeout_s=0.0))
    try:
        assert decoder.processes is None
    finally:
        decoder.shutdown()


def test_pool_run_passes_the_arguments_and_takes_one_place():
    pool = Pool(threads=1, queue_size=0, retry_after_s=3)
    try:
        assert asyncio.run(pool.run(lambda a, b: (a, b, pool.jobs), "x", 2)) == ("x", 2, 1)
        assert pool.jobs == 0
        pool.reserve(1)
        with pytest.raises(DecodeBusy):
            asyncio.run(pool.run(lambda: 1))
        assert pool.jobs == 1
    finally:
        pool.shutdown()


def test_ab_corruption_is_inline_up_to_inline_decode_pixels_values_then_in_the_pool():
    """Two 8x8 grey images are 128 values: with inline_decode_pixels 128 they are corrupted on the event loop,
    even with the pool full; with 127 they need a place in the pool. Either way the result is corrupt_images'."""
    batch = np.random.default_rng(5).integers(0, 256, (2, 1, 8, 8), dtype=np.uint8)
    expected = corrupt_images(batch, "gaussian_noise", 3, 7)
    for limit in (128, 127):
        decoder = Decoder(settings(inline_decode_pixels=limit, decode_threads=1, decode_queue_size=0))
        try:
            np.testing.assert_array_equal(asyncio.run(decoder.corrupt(batch, "gaussian_noise", 3, 7)), expected)
            decoder.pool.reserve(1)  # the pool is full now
            if limit == 128:
                np.testing.assert_array_equal(asyncio.run(decoder.corrupt(batch, "gaussian_noise", 3, 7)), expected)
            else:
                with pytest.raises(DecodeBusy):
                    asyncio.run(decoder.corrupt(batch, "gaussian_noise", 3, 7))
        finally:
            decoder.shutdown()
