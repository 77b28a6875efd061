"""What the page explains and how it behaves around a result, in headless Chromium at 1366 px and 390 px:
the OOD score's explanation and the legend of its two ticks, the sweep reading both arms on one class (the
RBN arm's clean answer without a label, as its caption says), the file input keeping the chosen file, a
failed upload clearing the previous result with the error in view, the summary's scroll hint on a phone,
and no empty gap above "Sweep". Screenshots of both widths go to the test's temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from web_support import SAMPLES, console_errors, until

SAMPLE = SAMPLES / "fashion-mnist" / "0_ankle-boot.png"
PHOTO = SAMPLES / "photos" / "9_sneaker_photo.jpg"  # a photo: the shipped models flag it


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def fresh_page(d, url: str, width: int) -> None:
    d.set_window_size(width, 844 if width < 800 else 768)
    d.get(url + "/")
    until(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page to start")


def upload(d, path: Path) -> None:
    before = d.find_element(By.ID, "result").get_attribute("data-seq")
    d.find_element(By.ID, "file").send_keys(str(path))
    until(d, lambda d: d.find_element(By.ID, "result").get_attribute("data-seq") not in (None, before),
          f"the comparison of {path.name}")


def in_view(d, css: str) -> bool:
    return d.execute_script("""const r = document.querySelector(arguments[0]).getBoundingClientRect();
        return r.top >= 0 && r.bottom <= window.innerHeight;""", css)


@pytest.mark.parametrize("width", [1366, 390])
def test_the_ood_score_is_explained_with_a_legend(browser, page_server, tmp_path, width):
    d = browser
    fresh_page(d, page_server.url, width)
    assert not d.find_element(By.ID, "ood-help").is_displayed()  # nothing to explain before a result
    assert "28×28 grey images of one garment" in text(d, "#models-know")  # what the models know, before any upload
    upload(d, PHOTO)
    assert d.find_element(By.ID, "file").get_attribute("value").endswith(PHOTO.name)  # not "No file chosen"
    help_text = text(d, "#ood-help")
    assert d.find_element(By.ID, "ood-help").is_displayed()
    for words in ("What it measures", "28×28 grey Fashion-MNIST clothing", "95th percentile", "1 ordinary image in 20",
                  "When flagged", "treat the label as unreliable"):
        assert words in help_text, words
    for side in ("rbn", "baseline"):
        assert text(d, f"#arm-{side} .ood .legend") == "this image threshold"
        ticks = d.find_elements(By.CSS_SELECTOR, f"#arm-{side} .ood .legend .tick")
        assert [t.get_attribute("class") for t in ticks] == ["tick tick-score", "tick tick-threshold"]
        if text(d, f"#arm-{side} .flag") == "flagged":
            assert "do not trust this label" in text(d, f"#arm-{side} .ood .advice")
    assert "flagged" in [text(d, f"#arm-{side} .flag") for side in ("rbn", "baseline")]  # a photo is OOD here
    d.execute_script("document.getElementById('ood-help').scrollIntoView()")
    assert d.save_screenshot(str(tmp_path / f"ood-help-{width}.png"))
    full = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(width, min(full + 140, 6000))
    assert d.save_screenshot(str(tmp_path / f"ood-help-{width}-full.png"))
    assert console_errors(d) == []


def test_without_a_label_the_sweep_reads_both_arms_on_the_rbn_clean_answer(browser, page_server, http, tmp_path):
    d = browser
    fresh_page(d, page_server.url, 1366)
    upload(d, PHOTO)
    clean = http.post("/ab", content=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"},
                      params={"top_k": 10}).json()["results"][0]
    target = clean["arms"]["rbn"]["index"]
    name = clean["arms"]["rbn"]["label"]
    d.find_element(By.ID, "sweep").click()
    until(d, lambda d: d.find_element(By.ID, "sweep-section").get_attribute("data-count") == "70", "the sweep")
    assert text(d, "#sweep-caption") == (f"Confidence of both arms in the RBN arm's answer on the clean image, {name}, "
                                         "at severity 1–5 of each corruption.")
    label = d.find_element(By.CSS_SELECTOR, '#sweep-plots figure[data-corruption="fog"] svg').get_attribute("aria-label")
    rbn_part, baseline_part = label.removeprefix("fog: RBN ").split("; baseline ")
    plotted = {"rbn": [float(v) for v in rbn_part.split(", ")], "baseline": [float(v) for v in baseline_part.split(", ")]}
    for severity in (1, 5):
        answer = http.post("/ab", content=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"},
                           params={"top_k": 10, "corruption": "fog", "severity": severity}).json()["results"][0]
        for side in ("rbn", "baseline"):  # both arms: their probability of the RBN arm's clean class
            expected = next((t["probability"] for t in answer["arms"][side]["top_k"] if t["index"] == target), 0.0)
            assert plotted[side][severity - 1] == pytest.approx(expected, abs=0.006), (side, severity)
    Select(d.find_element(By.ID, "label")).select_by_visible_text("Sneaker")
    until(d, lambda d: "Label Sneaker" in text(d, "#verdict"), "the labelled comparison")
    d.find_element(By.ID, "sweep").click()
    until(d, lambda d: "the label, Sneaker" in text(d, "#sweep-caption"), "the labelled sweep")
    d.execute_script("document.getElementById('sweep-section').scrollIntoView()")
    assert d.save_screenshot(str(tmp_path / "sweep-1366.png"))
    assert console_errors(d) == []


@pytest.mark.parametrize("width", [1366, 390])
def test_a_failed_upload_clears_the_previous_result_and_shows_the_error(browser, page_server, tmp_path, width):
    d = browser
    fresh_page(d, page_server.url, width)
    upload(d, SAMPLE)
    assert text(d, "#arm-rbn .predicted")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    d.find_element(By.ID, "file").send_keys(str(broken))
    until(d, lambda d: "No result for broken.png" in text(d, "#verdict"), "the error")
    assert d.find_elements(By.CSS_SELECTOR, "#arm-rbn *") == [] and d.find_elements(By.CSS_SELECTOR, "#arm-baseline *") == []
    assert not d.find_element(By.ID, "ood-help").is_displayed()
    assert d.find_element(By.ID, "verdict").get_attribute("role") == "alert"
    assert in_view(d, "#verdict"), "the error is below the fold"
    assert d.save_screenshot(str(tmp_path / f"failed-upload-{width}.png"))


def test_the_summary_says_it_scrolls_on_a_phone_and_no_gap_sits_above_the_sweep(browser, page_server, tmp_path):
    d = browser
    fresh_page(d, page_server.url, 1366)
    # before any image: "Sweep" follows the result area's text at the grid's gap, not at the height of the controls
    gap = d.execute_script("""return document.getElementById('sweep-section').getBoundingClientRect().top
        - document.getElementById('result').getBoundingClientRect().bottom""")
    assert 0 <= gap <= 24, gap
    upload(d, SAMPLE)
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#summary tbody tr"), "the summary rows")
    assert not d.find_element(By.ID, "summary-scroll").is_displayed()  # all 8 columns fit at 1366 px
    d.set_window_size(390, 844)
    until(d, lambda d: d.find_element(By.ID, "summary-scroll").is_displayed(), "the scroll hint at 390 px")
    wrap = d.execute_script("const w = document.getElementById('summary-wrap'); return [w.scrollWidth, w.clientWidth]")
    assert wrap[0] > wrap[1]
    d.execute_script("document.getElementById('summary-section').scrollIntoView()")
    assert d.save_screenshot(str(tmp_path / "summary-390.png"))
    d.set_window_size(1366, 768)


def test_redoc_renders_without_leaving_the_origin(browser, page_server):
    """ReDoc's sidebar logo came from Redocly's CDN; now every request /redoc makes stays on this server."""
    from web_support import is_local, requested_urls

    d = browser
    d.get_log("performance")  # forget the earlier tests' requests
    d.get(page_server.url + "/redoc")
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "img[alt='redocly logo']"), "ReDoc's sidebar")
    assert d.find_element(By.CSS_SELECTOR, "img[alt='redocly logo']").get_attribute("src") == page_server.url + "/docs-assets/favicon.png"
    urls = requested_urls(d)
    assert any(u.endswith("/docs-assets/redoc.standalone.js") for u in urls)
    assert all(is_local(u, page_server.url) for u in urls), [u for u in urls if not is_local(u, page_server.url)]


def test_with_workers_the_summary_says_each_process_counts_its_own(browser, page_server, tmp_path):
    from web_support import PageServer

    d = browser
    fresh_page(d, page_server.url, 1366)
    assert not d.find_element(By.ID, "summary-workers").is_displayed()  # one process: nothing to explain
    workers = PageServer(tmp_path / "workers.log", workers=2).wait_ready()
    try:
        fresh_page(d, workers.url, 1366)
        note = d.find_element(By.ID, "summary-workers")
        assert note.is_displayed() and "each keeps its own" in note.text and "rbn_serve_ab_*" in note.text
    finally:
        assert workers.stop() == 0
