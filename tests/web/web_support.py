"""Helpers for the page and browser tests: a real server process on the shipped bundles, and the URLs a
page refers to."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from harness.procs import RbnServe

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
SAMPLES = ROOT / "samples"
STATIC = ROOT / "service" / "http" / "web" / "static"
WAIT = 60  # seconds any one browser step may take on a busy 2-core machine


class PageServer(RbnServe):
    """``python -m service serve`` on the shipped bundles (harness.procs.RbnServe)."""

    ready_timeout = 120.0
    poll_interval = 0.1
    quote_lines = None

    def __init__(self, log_path: Path, *flags: str, **settings: object) -> None:
        super().__init__(log_path, *flags, model_repository=MODELS, **settings)


_REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""")


def references(html: str) -> list[str]:
    """Every URL an HTML page names in src=, href=, spec-url= or a script's ``url: '...'``."""
    return [a or b for a, b in _REFERENCE.findall(html)]


def is_local(url: str, origin: str) -> bool:
    """A URL of the page's own origin (absolute, or relative to it), or an inline data:/blob: URL."""
    if url.startswith(("data:", "blob:", origin + "/")) or url == origin:
        return True
    return url.startswith("/") and not url.startswith("//")


# --- the browser ----------------------------------------------------------------------------
def start_browser(folder: Path) -> webdriver.Chrome:
    """Headless Chromium (Debian's package) through its chromedriver, with DevTools network events and
    the console recorded; its profile and the driver's log under ``folder``."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "chromium and chromium-driver are Debian packages that ./run.sh test installs"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,768",
                 f"--user-data-dir={folder / 'profile'}", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path, log_output=str(folder / "chromedriver.log")), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.get("about:blank")
    driver.get_log("performance")  # the browser's own start page (chrome:// URLs) is not the page under test
    return driver


def until(driver, condition, what: str):
    return WebDriverWait(driver, WAIT).until(condition, message=f"waited {WAIT} s for {what}")


def requests_sent(driver) -> list[dict]:
    """Every request the page sent since the last call (DevTools Network.requestWillBeSent): url, method, headers."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            sent.append(message["params"]["request"])
    return sent


def requested_urls(driver) -> list[str]:
    return [r["url"] for r in requests_sent(driver)]


def console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
