"""Decoding work bounded before it starts (issue #25): what slipped past the structure checks of #11 —
a progressive JPEG of thousands of repeated scans (~10 s of libjpeg CPU for 240 KB), 0xFF fill bytes
before a JPEG marker (read one at a time by Pillow in Python), PNG metadata that inflates to megabytes
(zTXt, iCCP; one small enough to be decoded on the event loop), and TIFF strip floods in the header
forms the checks did not know (big-endian, the magic variants Pillow also accepts, BigTIFF).

Against a real server each is refused (422) quickly by two senders at once while ``/healthz`` is
polled, and the server then answers an ordinary image; legitimate progressive JPEGs still pass."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from service.core import imagecheck
from service.core.errors import ServiceError
from tests.reliability import hostile
from tests.reliability.rel_support import SAMPLE, SAMPLE_LABEL, Probe, raw, start, status_of

WORST_WAIT_S = 0.5  # the 50 ms on a quiet machine; this one is shared (BENCHMARKS.md "Hostile traffic")
SECONDS = 2.0


def request(body: bytes, content_type: str) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


CASES = {
    "jpeg of 20k repeated progressive scans": (hostile.jpeg_scan_flood(), "image/jpeg"),
    "jpeg of 1M fill bytes": (hostile.jpeg_fill_flood(), "image/jpeg"),
    "png of 15 zTXt inflating to 1 MB each (inline size)": (hostile.png_text_bomb(), "image/png"),
    "png of 60 zTXt inflating to 1 MB each": (hostile.png_text_bomb(60), "image/png"),
    "png with a 4 MB iCCP profile": (hostile.png_text_bomb(1, 4_000_000, b"iCCP"), "image/png"),
    "big-endian tiff of 400k strips": (hostile.tiff_strip_flood(order=">"), "image/tiff"),
    "tiff of 400k strips, magic MM*0": (hostile.tiff_strip_flood(order=">", magic=b"MM*\x00"), "image/tiff"),
    "tiff of 400k strips, magic MM0+": (hostile.tiff_strip_flood(order=">", magic=b"MM\x00+"), "image/tiff"),
    "bigtiff of 200k strips": (hostile.bigtiff_strip_flood(), "image/tiff"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start(tmp_path_factory.mktemp("decode-bounds")) as proc:
        yield proc


@pytest.mark.parametrize("name", list(CASES))
def test_each_file_is_refused_by_its_structure(name):
    data, _ = CASES[name]
    started = time.perf_counter()
    with pytest.raises(ServiceError) as refused:
        imagecheck.check(data)
    took = time.perf_counter() - started
    assert refused.value.status == 422, refused.value.message
    assert took < 0.05, f"{name}: the check took {took * 1000:.0f} ms"


@pytest.mark.parametrize("name", list(CASES))
def test_the_server_refuses_it_at_once_without_stalling(server, name):
    data, content_type = CASES[name]
    answers: list[tuple[bytes, float]] = []
    deadline = time.monotonic() + SECONDS

    def send() -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            answer = raw(server.port, request(data, content_type), timeout=30)
            answers.append((answer, time.monotonic() - started))

    with Probe(server.port) as probe:
        senders = [threading.Thread(target=send) for _ in range(2)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
    slowest = max(took for _, took in answers)
    print(f"\n{name}: {len(answers)} requests, slowest answer {slowest * 1000:.0f} ms, probe worst {probe.worst * 1000:.1f} ms")
    assert {status_of(a) for a, _ in answers} == {422}, answers[0][0][:300]
    assert json.loads(answers[0][0].partition(b"\r\n\r\n")[2])["error"]["code"] == "corrupt_image"
    assert slowest < 2.0
    assert not probe.failures and probe.worst <= WORST_WAIT_S, (probe.failures, probe.worst)


def photo(**save) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(buffer, "JPEG", **save)
    return buffer.getvalue()


@pytest.mark.parametrize("save", [{"progressive": True}, {}, {"restart_marker_blocks": 1}, {"optimize": True}],
                         ids=["progressive", "baseline", "restart-markers", "optimized"])
def test_ordinary_jpegs_pass(server, save):
    data = photo(**save)
    plain = imagecheck.check(data)
    assert plain is (not save.get("progressive", False))
    assert status_of(raw(server.port, request(data, "image/jpeg"))) == 200


def test_a_png_with_an_ordinary_icc_profile_and_text_passes(server):
    buffer = io.BytesIO()
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * 20_000, zip=True)
    info.add_itxt("XML:com.adobe.xmp", "<x/>" * 2000, zip=True)
    Image.new("RGB", (28, 28), (1, 2, 3)).save(buffer, "PNG", pnginfo=info, icc_profile=b"\0" * 3000)
    assert imagecheck.check(buffer.getvalue()) is False  # compressed metadata: decoded in the pool
    assert status_of(raw(server.port, request(buffer.getvalue(), "image/png"))) == 200


def test_the_server_still_answers_correctly_afterwards(server):
    answer = raw(server.port, request(SAMPLE, "image/png"))
    assert status_of(answer) == 200
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["predictions"][0]["label"] == SAMPLE_LABEL
