"""Every limit in service/core/config.py at its boundary: exactly at it, one below, one above.

First the settings themselves (each bound accepted, one step past refused at start-up, and a check that this
table names every constrained field, so a new limit cannot arrive without its boundary test); then the limits
requests meet, each with hand-computed sizes: image pixels, the request's pixel total over several images
(not its largest image), files, form fields and their size, the decode pool's places, top_k and its default.
The body limit is in tests/service/http/test_gate_asgi.py; the batch queue's in tests/service/core/test_batching.py
(test_queue_full_is_refused_at_once_with_retry_after fills it exactly, then one more image is refused);
docs/testing.md lists where each of the others is tested."""

from __future__ import annotations

import asyncio
import io

import annotated_types
import numpy as np
import pytest
from tests.service.asgi_app import SAMPLE, SHIPPED, app
from PIL import Image
from pydantic import ValidationError

from rbn.contract.bundle import InputSpec
from service.core.config import Settings
from service.core.decoding import Decoder, Pool, Upload
from service.core.errors import DecodeBusy, TooManyPixels
from service.core.imaging import open_image

# field -> (smallest accepted, largest accepted or None, the step past a bound); hand-written from config.py's
# documentation of each limit, not read from it. Floats with gt=0: the smallest positive float is accepted.
BOUNDS: dict[str, tuple[float, float | None, float]] = {
    "port": (0, 65535, 1),
    "listen_backlog": (1, None, 1),
    "workers": (1, 64, 1),
    "intra_op_threads": (0, None, 1),
    "cuda_device": (0, None, 1),
    "cuda_mem_limit_bytes": (0, None, 1),
    "max_batch_size": (1, None, 1),
    "max_queue_delay_ms": (0.0, None, 1e-9),
    "max_queue_size": (1, None, 1),
    "instances": (1, 16, 1),
    "max_body_bytes": (1024, None, 1),
    "max_image_pixels": (64, None, 1),
    "max_files": (1, None, 1),
    "max_form_fields": (1, None, 1),
    "max_form_field_bytes": (1024, None, 1),
    "default_top_k": (1, None, 1),
    "retry_after_s": (0, None, 1),
    "inline_decode_pixels": (0, None, 1),
    "decode_threads": (0, None, 1),
    "inline_body_bytes": (0, None, 1),
    "decode_queue_size": (0, None, 1),
    "max_request_pixels": (64, None, 1),
    "read_timeout_s": (5e-324, None, 5e-324),
    "keep_alive_timeout_s": (5e-324, None, 5e-324),
    "max_connections": (1, None, 1),
    "max_queue_wait_s": (5e-324, None, 5e-324),
    "unready_after_failures": (1, None, 1),
    "shadow_fraction": (0.0, 1.0, 1e-9),
    "shadow_max_pending": (1, None, 1),
    "drain_delay_s": (0.0, None, 1e-9),
    "graceful_timeout_s": (5e-324, None, 5e-324),
    "write_timeout_s": (5e-324, None, 5e-324),
    "max_response_bytes": (4096, None, 1),
    "max_input_magnitude": (5e-324, None, 5e-324),
    "max_header_bytes": (1024, None, 1),
    "max_header_count": (8, None, 1),
    "max_url_bytes": (256, None, 1),
    "grpc_port": (0, 65535, 1),
    "grpc_max_message_bytes": (1024, None, 1),
    "grpc_max_concurrent_rpcs": (1, None, 1),
    "decode_timeout_s": (0.0, None, 1e-9),
    "decode_cpu_s": (5e-324, None, 5e-324),
}
# Lowering these below their defaults needs the fields they must hold to come down too.
SMALL_QUEUE = {"max_queue_size": {"max_batch_size": 1, "max_files": 1}}


def settings(**values) -> Settings:
    return Settings(model_repository=SHIPPED, **values)


def test_the_table_names_every_constrained_setting():
    constrained = {name for name, info in Settings.model_fields.items()
                   if any(isinstance(m, (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt))
                          for m in info.metadata)}
    missing = constrained - set(BOUNDS)
    assert not missing, f"settings with bounds but no row in BOUNDS (add one, with its boundary test): {missing}"


@pytest.mark.parametrize("name", sorted(set(BOUNDS) & set(Settings.model_fields)))
def test_each_setting_takes_its_bounds_and_refuses_one_step_past(name):
    low, high, step = BOUNDS[name]
    extra = SMALL_QUEUE.get(name, {})
    assert getattr(settings(**{name: low}, **extra), name) == low
    with pytest.raises(ValidationError, match=name):
        settings(**{name: low - step if step >= 1 or low == 0 else 0.0}, **extra)
    if high is not None:
        assert getattr(settings(**{name: high}), name) == high
        with pytest.raises(ValidationError, match=name):
            settings(**{name: high + step})


@pytest.mark.parametrize("other", ["max_batch_size", "max_files"])
def test_the_queue_must_hold_a_batch_and_a_request_of_max_files_exactly(other):
    assert settings(max_queue_size=40, **{other: 40}).max_queue_size == 40  # the other default stays below
    with pytest.raises(ValidationError, match=f"max_queue_size \\(39\\) must be >= {other} \\(40\\)"):
        settings(max_queue_size=39, **{other: 40})


# --- limits a request meets ---------------------------------------------------------------------------------
def png(width: int, height: int, value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), value).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("limit", "refused"), [(63, True), (64, False), (65, False)])
def test_image_pixels_limit_is_exact(limit, refused):
    data = png(8, 8)  # 64 pixels
    if refused:
        with pytest.raises(TooManyPixels) as info:
            open_image(data, limit)
        assert info.value.message == f"image is 8x8 = 64 pixels; the limit is {limit}"
    else:
        assert open_image(data, limit).size == (8, 8)


def test_image_pixels_are_width_times_height_not_the_longer_side_squared():
    assert open_image(png(16, 4), 64).size == (16, 4)  # 64 pixels, though 16 * 16 = 256
    with pytest.raises(TooManyPixels):
        open_image(png(13, 5), 64)  # 65


SPEC = InputSpec(name="input", channels=1, height=28, width=28, mean=[0.5], std=[0.5])


PATHS = {  # the decoder's code paths: the pool's threads, or killable processes (small files inline, or all in them)
    "threads": {"decode_timeout_s": 0.0},
    "processes, inline": {"decode_timeout_s": 10.0},
    "processes": {"decode_timeout_s": 10.0, "inline_body_bytes": 0},
}


def decode(limit: int, sizes: list[tuple[int, int]], path: str) -> np.ndarray:
    decoder = Decoder(settings(max_request_pixels=limit, max_image_pixels=10_000, **PATHS[path]))
    try:
        return asyncio.run(decoder.decode([Upload(png(w, h)) for w, h in sizes], SPEC))
    finally:
        decoder.shutdown()


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize(("limit", "refused"), [(191, True), (192, False), (193, False)])
def test_the_request_pixel_limit_is_the_total_over_its_images(limit, refused, path):
    sizes = [(8, 8), (16, 4), (4, 16)]  # 64 pixels each, 192 together: every one alone is far below the limit
    if refused:
        with pytest.raises(TooManyPixels) as info:
            decode(limit, sizes, path)
        assert info.value.message == (f"the request's 3 image(s) hold 192 pixels together; "
                                      f"the limit is {limit} per request")
    else:
        assert decode(limit, sizes, path).shape == (3, 1, 28, 28)


@pytest.fixture(scope="module")
def limited():
    """Three 28x28 images per request are 2352 pixels; two files and two 1024-byte form fields at most."""
    with app(max_request_pixels=2352, max_files=2, max_form_fields=2, max_form_field_bytes=1024, default_top_k=2) as a:
        yield a


def files(n: int) -> list:
    return [("file", (f"{i}.png", SAMPLE, "image/png")) for i in range(n)]


@pytest.mark.parametrize(("count", "status"), [(1, 200), (2, 200), (3, 413)])
def test_max_files_is_exact(limited, count, status):
    r = limited.client.post("/predict", files=files(count))
    assert r.status_code == status, r.text
    if status == 413:
        assert r.json()["error"]["code"] == "too_many_files"
        assert r.json()["error"]["message"] == "more than 2 files in one request"
    else:
        assert len(r.json()["predictions"]) == count


@pytest.mark.parametrize(("fields", "status"), [(1, 200), (2, 200), (3, 422)])
def test_max_form_fields_is_exact(limited, fields, status):
    r = limited.client.post("/predict", files=files(1), data={f"note{i}": "x" for i in range(fields)})
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["error"]["code"] == "invalid_argument" and "Too many fields" in r.json()["error"]["message"]


@pytest.mark.parametrize(("size", "status"), [(1023, 200), (1024, 200), (1025, 422)])
def test_max_form_field_bytes_is_exact(limited, size, status):
    r = limited.client.post("/predict", files=files(1), data={"note": "x" * size})
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["error"]["code"] == "invalid_argument" and "maximum size" in r.json()["error"]["message"]


@pytest.mark.parametrize(("limit", "status"), [(2351, 413), (2352, 200), (2353, 200)])
def test_the_request_pixel_limit_over_http(limit, status):
    body = files(3)
    with app(max_request_pixels=limit, max_files=3) as a:
        r = a.client.post("/predict", files=body)
    assert r.status_code == status, r.text
    if status == 413:
        assert r.json()["error"]["code"] == "too_many_pixels"


@pytest.mark.parametrize(("top_k", "status", "labels"), [(None, 200, 2), (1, 200, 1), (10, 200, 10), (0, 422, 0),
                                                          (1000, 200, 10), (1001, 422, 0)])
def test_top_k_default_and_bounds(limited, top_k, status, labels):
    params = {} if top_k is None else {"top_k": top_k}
    r = limited.client.post("/predict", content=SAMPLE, headers={"Content-Type": "image/png"}, params=params)
    assert r.status_code == status, r.text
    if status == 200:
        assert len(r.json()["predictions"][0]["top_k"]) == labels  # capped at the model's 10 classes


def test_the_decode_pool_takes_exactly_its_threads_plus_queue_then_refuses():
    pool = Pool(threads=2, queue_size=3, retry_after_s=7)
    try:
        pool.reserve(5)  # 2 running + 3 waiting: exactly full
        assert pool.jobs == 5
        with pytest.raises(DecodeBusy) as info:
            pool.reserve(1)
        assert info.value.headers == {"Retry-After": "7"}
        assert info.value.message == "the decode pool is full (5 jobs for 5 places); retry later"
        assert pool.jobs == 5  # nothing taken by the refusal
        pool.jobs = 4
        pool.reserve(1)
        with pytest.raises(DecodeBusy):
            pool.reserve(2)  # all or nothing
        assert pool.jobs == 5
    finally:
        pool.shutdown()
