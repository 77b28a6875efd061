"""The page at / and /docs in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): upload a sample, both arms shown as the API answers them, the severity slider changes the
answer, a sweep draws every corruption, the summary count grows; no request leaves the server's origin
(Chrome's DevTools network events) and the console stays clean. Screenshots at 1366x768 and at a
390-px phone width go to the test's temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select
from web_support import SAMPLES, console_errors, is_local, requested_urls, until

SAMPLE = SAMPLES / "fashion-mnist" / "0_ankle-boot.png"
ANKLE_BOOT = 9


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def screenshots(driver, folder: Path, name: str) -> list[Path]:
    """The viewport at 1366x768 and at 390x844, and the whole page at each width."""
    paths = []
    for width, height in ((1366, 768), (390, 844)):
        driver.set_window_size(width, height)
        driver.execute_script("window.scrollTo(0, 0)")
        paths.append(folder / f"{name}-{width}.png")
        assert driver.save_screenshot(str(paths[-1]))
        full = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(full + 140, 6000))
        paths.append(folder / f"{name}-{width}-full.png")
        assert driver.save_screenshot(str(paths[-1]))
    driver.set_window_size(1366, 768)
    return paths


def api_ab(http, **params) -> dict:
    answer = http.post("/ab", content=SAMPLE.read_bytes(), headers={"Content-Type": "image/png"},
                       params={"top_k": 10, **params})
    assert answer.status_code == 200, answer.text
    return answer.json()["results"][0]


def test_upload_compare_slide_sweep_and_summary(browser, page_server, http, tmp_path):
    d = browser
    d.get(page_server.url + "/")
    until(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page to start")
    assert d.title == "rbn-serve · A/B workbench"
    assert d.find_element(By.LINK_TEXT, "API docs").get_attribute("href") == page_server.url + "/docs"

    # Upload a sample through the file input: both arms appear, as the API answers them.
    d.find_element(By.ID, "file").send_keys(str(SAMPLE))
    until(d, lambda d: d.find_element(By.ID, "result").get_attribute("data-seq"), "the first comparison")
    clean = api_ab(http)
    for side in ("rbn", "baseline"):
        arm = clean["arms"][side]
        assert arm["model"] in text(d, f"#arm-{side} h3")
        assert text(d, f"#arm-{side} .predicted") == arm["label"]
        assert text(d, f"#arm-{side} .probability") == f"{100 * arm['probability']:.1f}%"
        assert text(d, f"#arm-{side} .ood .score") == f"{arm['ood']['score']:.2f}"
        assert d.execute_script(f"return document.querySelector('#arm-{side} img.seen').naturalWidth") == 28
        # The top-k bars are drawn: each fill spans its probability of the track (within a pixel).
        widths = d.execute_script(f"""return [...document.querySelectorAll('#arm-{side} .bars li')].map((li) => [
            li.querySelector('.fill').getBoundingClientRect().width, li.querySelector('.track').getBoundingClientRect().width])""")
        assert len(widths) == 5 and widths[0][1] > 50
        for (fill, track), top in zip(widths, arm["top_k"], strict=False):
            assert fill == pytest.approx(top["probability"] * track, abs=1.0), (side, top)
    assert text(d, "#agree") == ("yes" if clean["agree"] else "no")
    assert text(d, "#l1") == f"{clean['l1_distance']:.3f}"

    # A label and a corruption; then the severity slider, moved with the keyboard, changes the answer.
    Select(d.find_element(By.ID, "label")).select_by_value(str(ANKLE_BOOT))
    Select(d.find_element(By.ID, "corruption")).select_by_value("gaussian_noise")
    until(d, lambda d: "gaussian noise, severity 3" in text(d, "#verdict"), "the corrupted comparison")
    slider = d.find_element(By.ID, "severity")
    assert slider.is_enabled() and slider.get_attribute("value") == "3"
    before_png = d.find_element(By.CSS_SELECTOR, "#arm-rbn img.seen").get_attribute("src")
    at3 = api_ab(http, corruption="gaussian_noise", severity=3, label=ANKLE_BOOT)
    at5 = api_ab(http, corruption="gaussian_noise", severity=5, label=ANKLE_BOOT)
    slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    until(d, lambda d: "severity 5" in text(d, "#verdict"), "the answer at severity 5")
    assert text(d, "#severity-value") == "5"
    assert d.find_element(By.CSS_SELECTOR, "#arm-rbn img.seen").get_attribute("src") != before_png
    shown = text(d, "#arm-rbn .probability")
    assert shown == f"{100 * at5['arms']['rbn']['probability']:.1f}%"
    assert at5["arms"]["rbn"]["probability"] != at3["arms"]["rbn"]["probability"]  # the check above means something

    # The sweep: 14 corruptions x 5 severities, two 5-point curves each; the summary grows by 71 (+ the clean run).
    until(d, lambda d: d.find_element(By.ID, "summary-count").get_attribute("data-count"), "the summary")
    counted = int(d.find_element(By.ID, "summary-count").get_attribute("data-count"))
    d.find_element(By.ID, "sweep").click()
    until(d, lambda d: d.find_element(By.ID, "sweep-section").get_attribute("data-count") == "70", "the sweep")
    figures = d.find_elements(By.CSS_SELECTOR, "#sweep-plots figure")
    assert len(figures) == 14
    for figure in figures:
        lines = figure.find_elements(By.TAG_NAME, "polyline")
        assert len(lines) == 2 and all(len(line.get_attribute("points").split()) == 5 for line in lines)
    until(d, lambda d: int(d.find_element(By.ID, "summary-count").get_attribute("data-count")) >= counted + 71,
          "the summary count to grow by the sweep")
    rows = d.find_elements(By.CSS_SELECTOR, "#summary tbody tr")
    assert any("gaussian noise" in row.text for row in rows)

    shots = screenshots(d, tmp_path, "workbench")
    assert all(p.stat().st_size > 10_000 for p in shots)

    urls = requested_urls(d)
    assert any(u.startswith(page_server.url + "/ab?") for u in urls)
    assert all(is_local(u, page_server.url) for u in urls), [u for u in urls if not is_local(u, page_server.url)]
    assert console_errors(d) == []


def test_docs_render_from_local_assets(browser, page_server, tmp_path):
    d = browser
    d.get_log("performance")  # forget the earlier test's requests
    d.get(page_server.url + "/docs")
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"), "Swagger UI to list the routes")
    paths = {e.text.replace("\u200b", "") for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/predict", "/ab", "/ab/summary"} <= paths
    assert d.save_screenshot(str(tmp_path / "docs-1366.png"))
    urls = requested_urls(d)
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in urls)
    assert all(is_local(u, page_server.url) for u in urls), [u for u in urls if not is_local(u, page_server.url)]
    assert console_errors(d) == []


def test_drop_and_paste_add_images(browser, page_server):
    d = browser
    d.get(page_server.url + "/")
    until(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page to start")
    # What a file dragged from the desktop or pasted from the clipboard delivers: a DataTransfer holding a File.
    deliver = """
        const [kind, url, name, done] = arguments;
        fetch(url).then((r) => r.blob()).then((blob) => {
          const data = new DataTransfer();
          data.items.add(new File([blob], name, {type: blob.type}));
          const event = kind === "drop" ? new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true})
                                        : new ClipboardEvent("paste", {clipboardData: data, bubbles: true});
          (kind === "drop" ? document.getElementById("drop") : document).dispatchEvent(event);
          done();
        });"""
    for n, (kind, name) in enumerate((("drop", "18_bag.png"), ("paste", "15_trouser.png")), start=1):
        d.execute_async_script(deliver, kind, f"/samples/fashion-mnist/{name}", name)
        until(d, lambda d, n=n: len(d.find_elements(By.CSS_SELECTOR, "#images button")) == n, f"the {kind}ped image")
        until(d, lambda d, name=name: name in text(d, "#verdict"), f"the {kind}ped image's comparison")
    buttons = d.find_elements(By.CSS_SELECTOR, "#images button")
    assert [b.get_attribute("aria-pressed") for b in buttons] == ["false", "true"]
    buttons[0].send_keys(Keys.ENTER)  # back to the first image, by keyboard
    until(d, lambda d: "18_bag.png" in text(d, "#verdict"), "the first image again")
    assert console_errors(d) == []
