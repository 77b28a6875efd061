"""POST /predict through a real uvicorn process."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.service.svc_support import BN, RBN, encode

from rbn.experiments.data import LABELS
from service.http.routes.schemas.inference import PredictResponse


def post_image(client, data: bytes, content_type: str = "image/png", **params):
    return client.post("/predict", content=data, headers={"Content-Type": content_type}, params=params)


def test_raw_body_answer(client, fmnist_samples):
    name, data, _ = fmnist_samples[0]
    r = post_image(client, data, top_k=4)
    assert r.status_code == 200, r.text
    answer = PredictResponse.model_validate(r.json())
    assert answer.model.name == RBN and answer.model.version == 1  # the primary RBN model
    (p,) = answer.predictions
    assert len(p.top_k) == 4
    assert [t.label for t in p.top_k] == [LABELS[t.index] for t in p.top_k]
    probs = [t.probability for t in p.top_k]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    assert (p.label, p.index, p.probability) == (p.top_k[0].label, p.top_k[0].index, p.top_k[0].probability)
    models = client.get("/models").json()["models"]
    layers = next(m for m in models if m["name"] == RBN)["stats_layers"]
    assert list(p.ood.stats) == layers
    assert p.ood.flag == (p.ood.score > p.ood.threshold)
    assert answer.timings.total_ms >= answer.timings.inference_ms > 0
    assert p.filename is None


def test_top_k_defaults_and_caps(client, fmnist_samples):
    data = fmnist_samples[1][1]
    assert len(post_image(client, data).json()["predictions"][0]["top_k"]) == 3  # default_top_k
    full = post_image(client, data, top_k=100).json()["predictions"][0]["top_k"]
    assert sorted(t["index"] for t in full) == list(range(10))
    assert sum(t["probability"] for t in full) == pytest.approx(1.0, abs=1e-6)


def test_multipart_several_files(client, fmnist_samples):
    chosen = fmnist_samples[:5]
    files = [("file", (name, data, "image/png")) for name, data, _ in chosen]
    r = client.post("/predict", files=files, params={"top_k": 1})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["filename"] for p in predictions] == [name for name, _, _ in chosen]
    # each multipart answer equals the single-image answer for that file
    for (_, data, _), p in zip(chosen, predictions, strict=True):
        single = post_image(client, data, top_k=1).json()["predictions"][0]
        assert single["index"] == p["index"]
        assert single["probability"] == pytest.approx(p["probability"], rel=1e-4, abs=1e-6)
        assert single["ood"]["score"] == pytest.approx(p["ood"]["score"], rel=1e-4, abs=1e-5)


def test_named_model(client, fmnist_samples):
    r = post_image(client, fmnist_samples[0][1], model=BN)
    assert r.status_code == 200
    assert r.json()["model"]["name"] == BN


def test_shipped_photos(client, photos):
    """RGB JPEG product photos (dark on light), an RGBA PNG and a 16-bit PNG all get answers."""
    for name, data, _ in photos:
        kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
        r = post_image(client, data, kind)
        assert r.status_code == 200, (name, r.text)
        assert r.json()["predictions"][0]["label"] in LABELS


def _formats() -> dict[str, tuple[bytes, str]]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (40, 30), dtype=np.uint8)
    rgb = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, rng.integers(0, 255, (40, 30), dtype=np.uint8)])
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg_exif = io.BytesIO()
    Image.fromarray(rgb).save(jpeg_exif, "JPEG", exif=exif)
    gif = io.BytesIO()
    frames = [Image.fromarray(gray).convert("P"), Image.fromarray(255 - gray).convert("P")]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG")
    sixteen = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 257).save(sixteen, "PNG")
    return {
        "png-gray": (encode(gray), "image/png"),
        "png-rgba": (encode(rgba), "image/png"),
        "png-palette": (encode(np.asarray(Image.fromarray(rgb).convert("P"))), "image/png"),
        "png-16bit": (sixteen.getvalue(), "image/png"),
        "jpeg-exif": (jpeg_exif.getvalue(), "image/jpeg"),
        "jpeg-cmyk": (cmyk.getvalue(), "image/jpeg"),
        "webp": (encode(rgb, "WEBP"), "image/webp"),
        "bmp": (encode(rgb, "BMP"), "image/bmp"),
        "gif-animated": (gif.getvalue(), "image/gif"),
        "tiff": (encode(rgb, "TIFF"), "image/tiff"),
        "octet-stream": (encode(gray), "application/octet-stream"),
    }


@pytest.mark.parametrize("kind", list(_formats()))
def test_image_formats(client, kind):
    data, content_type = _formats()[kind]
    r = post_image(client, data, content_type)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1


def shadow_total(client) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("rbn_serve_shadow_comparisons_total{"):
            assert f'baseline="{BN}"' in line and f'model="{RBN}"' in line
            total += float(line.split()[-1])
    return total


def test_shadow_traffic_runs_on_the_baseline(client, fmnist_samples):
    """The shared server shadows every /predict on the RBN model to its baseline, off the request path."""
    before = shadow_total(client)
    files = [("file", (name, data, "image/png")) for name, data, _ in fmnist_samples[:3]]
    assert client.post("/predict", files=files).status_code == 200
    assert post_image(client, fmnist_samples[0][1], model=BN).status_code == 200  # a baseline has no shadow
    deadline = time.monotonic() + 20
    while shadow_total(client) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shadow_total(client) >= before + 3  # one comparison per image



def _gc_collections(client) -> dict[str, float]:
    """python_gc_collections_total per generation, from the server's own /metrics."""
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("python_gc_collections_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('generation="')[1].split('"')[0]] = float(value)
    return counts


async def _post_concurrently(url: str, data: bytes, total: int, concurrency: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def worker(n: int) -> list[int]:
            return [(await client.post("/predict", content=data, headers={"Content-Type": "image/png"})).status_code
                    for _ in range(n)]
        done = await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    return [code for codes in done for code in codes]


def test_serving_does_not_run_the_cyclic_gc(server, client, fmnist_samples):
    """The server freezes its start-up heap and raises the young threshold once models are loaded
    (service.http.server.settle_heap). Under concurrent load CPython's defaults ran a young collection
    about every 10 requests and a ~60 ms full collection on the event loop about every 1000."""
    before = _gc_collections(client)
    assert set(before) == {"0", "1", "2"}
    codes = asyncio.run(_post_concurrently(server.url, fmnist_samples[2][1], total=800, concurrency=16))
    assert codes == [200] * 800
    after = _gc_collections(client)
    assert after["2"] == before["2"]
    assert after["0"] - before["0"] <= 2  # 22 with the defaults


def test_raw_body_and_multipart_take_different_paths_to_the_same_answer(client, fmnist_samples):
    """A raw image body is answered past FastAPI's routing (service.http.fastpath), multipart through
    it: answers, errors and the route label of the rejection counter must not tell them apart."""
    name, data, _ = fmnist_samples[3]
    raw = post_image(client, data, "application/octet-stream", top_k=5).json()["predictions"][0]
    multi = client.post("/predict", files=[("file", (name, data, "image/png"))], params={"top_k": 5}).json()
    (multi,) = multi["predictions"]
    assert multi.pop("filename") == name
    assert [t["index"] for t in raw["top_k"]] == [t["index"] for t in multi["top_k"]]
    assert [t["probability"] for t in raw["top_k"]] == pytest.approx([t["probability"] for t in multi["top_k"]], abs=1e-6)
    assert raw["ood"]["stats"] == pytest.approx(multi["ood"]["stats"], rel=1e-5)
    series = 'rbn_serve_rejected_requests_total{reason="model_not_found",route="/predict"}'
    before = _metric(client, series)
    for params, status in (({"top_k": 0}, 422), ({"model": "nope"}, 404)):
        fast = post_image(client, data, **params)
        slow = client.post("/predict", files=[("file", (name, data, "image/png"))], params=params)
        assert fast.status_code == slow.status_code == status
        fast_error, slow_error = fast.json()["error"], slow.json()["error"]
        assert fast_error.pop("request_id") == fast.headers["x-request-id"]  # each answer carries its own id
        assert slow_error.pop("request_id") == slow.headers["x-request-id"]
        assert fast_error == slow_error
    assert _metric(client, series) == before + 2


def _metric(client, series: str) -> float:
    line = next((line for line in client.get("/metrics").text.splitlines() if line.startswith(series + " ")), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])
