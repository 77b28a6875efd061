"""RGB photos end to end (issue #24): a pair of ImageNet-convention bundles at 64 px (shorter side 73,
centre crop 64, a different mean and std per channel) served by a real server process; answers
checked against references computed in the test with plain Pillow and numpy, never with the
service's own preprocessing."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data
from tests.service.svc_support import ROOT, start_server

from tests.photo_bundles import BN, LABELS, RBN, energy_by_hand, reference_logits, write_photo_bundle, write_photo_pair

CALIBRATED = "photo-calibrated"
THRESHOLD = -1.9  # energies of the test photos straddle it (by hand below)
CALIBRATION = {"kind": "graph", "method": "energy", "threshold": THRESHOLD, "calibration_samples": 40,
               "fit_samples": 160, "source": "my-photos", "heldout_samples": 50, "heldout_fpr": 0.06}


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def served_logits(prediction: dict) -> np.ndarray:
    """The logits up to softmax's constant, from all classes' probabilities: log p_i - log p_0."""
    p = np.zeros(len(LABELS))
    for entry in prediction["top_k"]:
        p[entry["index"]] = entry["probability"]
    return np.log(p) - np.log(p[0])


def centred(logits: np.ndarray) -> np.ndarray:
    return logits - logits[0]


@pytest.fixture(scope="module")
def photo_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("photo-repo")
    write_photo_pair(repo)  # 64 px: shorter side 73, centre crop 64
    write_photo_bundle(repo, CALIBRATED, "bn", ood=CALIBRATION)
    with start_server(repo, tmp_path_factory.mktemp("photo-server"), max_image_pixels=13_000_000) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(photo_server):
    with httpx.Client(base_url=photo_server.url, timeout=60) as c:
        yield c


def predict(client, raw: bytes, content_type: str, model: str = RBN) -> dict:
    r = client.post("/predict", content=raw,
                    headers={"Content-Type": content_type}, params={"model": model, "top_k": len(LABELS)})
    assert r.status_code == 200, r.text
    (prediction,) = r.json()["predictions"]
    return prediction


def test_png_photo_logits_equal_the_hand_reference(client):
    photo = Image.fromarray(data.chelsea())  # 451x300: no draft (PNG), no reduce (under 3x)
    prediction = predict(client, png(photo), "image/png")
    np.testing.assert_allclose(served_logits(prediction), centred(reference_logits(photo)), atol=1e-4)


def test_jpeg_photo_is_decoded_at_reduced_scale_and_stays_close_to_the_full_decode(client):
    """A 1600x1200 JPEG: libjpeg decodes it at 1/8 (200x150, still >= 73 on the shorter side).
    Exactly equal to Pillow's own draft decode + resize + crop; within 0.05 of the full decode's
    logits (the draft changes pixels by about half a grey level; measured here: 0.014)."""
    photo = Image.fromarray(data.chelsea()).resize((1600, 1200), Image.Resampling.BICUBIC)
    raw = jpeg(photo)
    served = served_logits(predict(client, raw, "image/jpeg"))
    drafted = Image.open(io.BytesIO(raw))
    drafted.draft("RGB", (73, 73))
    assert drafted.size == (200, 150)
    np.testing.assert_allclose(served, centred(reference_logits(drafted)), atol=1e-4)
    full = Image.open(io.BytesIO(raw))
    np.testing.assert_allclose(served, centred(reference_logits(full)), atol=0.05)


def test_a_12_megapixel_jpeg_is_served_from_its_one_eighth_scale_decode(client):
    photo = Image.fromarray(data.astronaut()[64:448]).resize((4000, 3000), Image.Resampling.BICUBIC)
    raw = jpeg(photo)
    served = served_logits(predict(client, raw, "image/jpeg"))
    drafted = Image.open(io.BytesIO(raw))
    drafted.draft("RGB", (73, 73))  # 1/8: 500x375
    np.testing.assert_allclose(served, centred(reference_logits(drafted)), atol=1e-4)


def test_the_pixel_limit_is_checked_on_the_header(client):
    big = jpeg(Image.new("RGB", (4000, 3400), (90, 120, 150)))  # 13.6 MP > the server's 13 MP
    r = client.post("/predict", content=big, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_pixels"


@pytest.mark.parametrize("corruption", [None, "gaussian_noise", "fog"])
def test_ab_on_the_pair_agrees_everywhere(client, corruption):
    photos = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee()), Image.fromarray(data.rocket())]
    files = [("file", (f"{i}.jpg", jpeg(p), "image/jpeg")) for i, p in enumerate(photos)]
    params = {"model": RBN, "top_k": len(LABELS), "input_png": "true"}
    if corruption:
        params.update(corruption=corruption, severity="3")
    r = client.post("/ab", files=files, params=params)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    for item in results:
        assert item["arms"]["rbn"]["model"] == RBN and item["arms"]["baseline"]["model"] == BN
        assert item["agree"] is True and item["l1_distance"] == pytest.approx(0.0, abs=1e-7)
        seen = Image.open(io.BytesIO(base64.b64decode(item["input_png"])))
        assert seen.mode == "RGB" and seen.size == (64, 64)


def test_models_lists_the_imagenet_input_spec(client):
    r = client.get(f"/models/{RBN}")
    assert r.status_code == 200
    spec = r.json()["input"]
    assert spec["resize"] == "shorter_side_crop" and spec["resize_size"] == 73 and spec["channels"] == 3
    assert spec["mean"] == [0.485, 0.456, 0.406] and spec["invert"] == "never"


def test_an_uncalibrated_bundle_reports_energy_unflagged_and_why(client, photo_server):
    """The pair has no OOD calibration: the score is the logits' energy, reported as uncalibrated, no flag."""
    photo = Image.fromarray(data.chelsea())
    ood = predict(client, png(photo), "image/png")["ood"]
    logits = reference_logits(photo)
    energy = energy_by_hand(logits)  # -logsumexp
    assert ood["score"] == pytest.approx(energy, abs=1e-4)
    assert ood["calibrated"] is False and ood["method"] == "energy"
    assert ood["flag"] is None and ood["threshold"] is None
    assert "no OOD calibration" in ood["reason"]
    assert list(ood["stats"]) == ["red", "green", "blue"]
    assert f"model {RBN}: no OOD calibration in model.json" in photo_server.log()
    assert f"model {CALIBRATED}: no OOD calibration" not in photo_server.log()
    # the uncalibrated energy is not a calibrated score: it feeds neither the score histogram nor the flag counter
    metrics = client.get("/metrics").text.splitlines()
    assert f'rbn_serve_ood_score_count{{model="{RBN}"}} 0.0' in metrics
    assert f'rbn_serve_ood_flagged_total{{model="{RBN}"}} 0.0' in metrics



def test_a_calibrated_photo_bundle_keeps_the_answer_shape_and_lists_its_calibration(client):
    flags = []
    for photo in (data.chelsea(), data.coffee()):  # energies by hand: -2.66 and -1.41
        image = Image.fromarray(photo)
        ood = predict(client, png(image), "image/png", model=CALIBRATED)["ood"]
        assert set(ood) == {"score", "flag", "threshold", "stats"}
        assert ood["score"] == pytest.approx(energy_by_hand(reference_logits(image)), abs=1e-4)
        assert ood["threshold"] == THRESHOLD
        flags.append(ood["flag"])
    assert flags == [False, True]
    summary = client.get(f"/models/{CALIBRATED}").json()["ood"]
    assert (summary["source"], summary["heldout_samples"], summary["heldout_fpr"]) == ("my-photos", 50, 0.06)
    assert client.get(f"/models/{RBN}").json()["ood"] is None


def test_ab_eval_on_an_rgb_image_folder(photo_server, tmp_path):
    """`rbn-serve ab-eval` on an ImageFolder of JPEG photos (class folders named after the labels): every
    comparison agrees, both arms have the same accuracy."""
    folder = tmp_path / "photos"
    for label, photos in (("cat", [data.chelsea(), data.chelsea()[:, ::-1]]), ("coffee", [data.coffee()]),
                          ("rocket", [data.rocket()])):
        (folder / label).mkdir(parents=True)
        for i, pixels in enumerate(photos):
            Image.fromarray(np.ascontiguousarray(pixels)).save(folder / label / f"{i}.jpg", "JPEG", quality=90)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "service", "ab-eval", str(folder), "--server", photo_server.url,
                           "--model", RBN, "--corruptions", "none,fog,zoom_blur", "--severities", "2",
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "out" / "ab-eval.json").read_text())["rows"]
    assert {(r["corruption"], r["severity"]) for r in rows} >= {("none", 0), ("fog", 2), ("zoom_blur", 2)}
    for row in rows:
        assert row["images"] == 4 and row["agreement"]["successes"] == 4
        assert row["rbn"] == row["baseline"]  # accuracy (a Rate): the same model twice
