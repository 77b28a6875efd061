"""The page with an RGB photo model (issue #24) in a real headless Chromium: an ImageNet-convention
pair at 128 px (tests/photo_bundles.py) served from its own repository; a JPEG photo uploaded; the
model's input shown in colour and smoothly shrunk, the uncalibrated OOD score said to be so, the
identical arms agreeing with L1 0."""

from __future__ import annotations

import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from skimage import data
from web_support import console_errors, until

from harness.procs import RbnServe
from tests.photo_bundles import BN, RBN, write_photo_pair

SIZE = 128  # larger than the page's 84-px preview box: shown smoothly, not with square pixels


@pytest.fixture(scope="module")
def photo_page(tmp_path_factory):
    repo = tmp_path_factory.mktemp("photo-models")
    write_photo_pair(repo, size=SIZE)
    server = RbnServe(tmp_path_factory.mktemp("photo-page") / "server.log", model_repository=repo)
    server.ready_timeout = 120.0
    with server.wait_ready():
        yield server


def test_a_photo_model_on_the_page(browser, photo_page, tmp_path):
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(data.chelsea()).resize((1200, 800), Image.Resampling.BICUBIC).save(photo, "JPEG", quality=90)
    d = browser
    d.get(photo_page.url + "/")
    until(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page to start")
    assert d.find_element(By.ID, "pair").get_attribute("value") == RBN
    d.find_element(By.ID, "file").send_keys(str(photo))
    until(d, lambda d: d.find_element(By.ID, "result").get_attribute("data-seq"), "the first comparison")
    for side, model in (("rbn", RBN), ("baseline", BN)):
        assert model in d.find_element(By.CSS_SELECTOR, f"#arm-{side} h3").text
        until(d, lambda d: "photo" in d.find_element(By.CSS_SELECTOR, f"#arm-{side} img.seen").get_attribute("class"),
              "the input shown as a photo")
        seen = d.execute_script(f"""const img = document.querySelector('#arm-{side} img.seen');
            const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
            const g = c.getContext('2d'); g.drawImage(img, 0, 0);
            const p = g.getImageData(0, 0, c.width, c.height).data; let colour = 0;
            for (let i = 0; i < p.length; i += 4) colour += Math.abs(p[i] - p[i + 1]) + Math.abs(p[i + 1] - p[i + 2]);
            return [img.naturalWidth, img.naturalHeight, getComputedStyle(img).imageRendering, colour / (p.length / 4)];""")
        assert seen[:3] == [SIZE, SIZE, "auto"]
        assert seen[3] > 5  # mean |R-G| + |G-B| per pixel: a colour image (a grey one gives 0)
        legend = d.find_element(By.CSS_SELECTOR, f"#arm-{side} .ood .legend")
        assert "Uncalibrated energy score" in legend.text and "no OOD calibration" in legend.get_attribute("title")
        assert d.find_element(By.CSS_SELECTOR, f"#arm-{side} .ood .flag").text == "uncalibrated"
    assert d.find_element(By.ID, "agree").text == "yes"
    assert d.find_element(By.ID, "l1").text == "0.000"
    assert console_errors(d) == []
