"""The A/B workbench page as a user feels it, in headless Chromium (Selenium): from choosing an image in
the file input to both arms' answers on screen, and a full sweep (every corruption x severity 1..5) from
the click to the plots drawn. Targets (issue #12): first result <= 300 ms, sweep <= 3 s.

The page times itself: ``performance.measure("rbn-upload-to-result")`` runs from the file input's change
event to the animation frame after the answer is rendered; the sweep's ``data-ms`` from the click to the
plots drawn. A real server process (the shipped bundles, CPU) on this machine.

    .venv/bin/python bench/web_bench.py --uploads 30 --sweeps 5 --pause-training --out /tmp/web_bench.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402 - the repository on sys.path first
    ROOT,
    Paused,
    Service,
    emit,
    exit_on_sigterm,
    header,
    progress,
)

TRAINING = r"bin/rbn (train|finetune)"  # the background jobs paused while measuring (--pause-training)
SAMPLES = ROOT / "samples" / "fashion-mnist"


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,768",
                 f"--user-data-dir={profile}", "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)


def wait(driver, condition, timeout: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def measure(url: str, uploads: int, sweeps: int) -> tuple[list[float], list[float]]:
    from selenium.webdriver.common.by import By

    images = sorted(SAMPLES.glob("*.png"))[:uploads]
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(Path(profile))
        try:
            driver.get(url + "/")
            wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
            file_input = driver.find_element(By.ID, "file")
            first = []
            for i, image in enumerate([images[0], *images]):  # one unmeasured upload warms the page's code paths
                driver.execute_script("performance.clearMeasures('rbn-upload-to-result')")
                file_input.send_keys(str(image))
                ms = wait(driver, lambda d: d.execute_script(
                    "const m = performance.getEntriesByName('rbn-upload-to-result'); return m.length && m[0].duration"))
                if i:
                    first.append(float(ms))
            sweep = []
            for i in range(sweeps + 1):  # the first sweep unmeasured, too
                driver.execute_script("document.getElementById('sweep-section').removeAttribute('data-ms')")
                driver.find_element(By.ID, "sweep").click()
                ms = wait(driver, lambda d: d.find_element(By.ID, "sweep-section").get_attribute("data-ms"), 120)
                count = driver.find_element(By.ID, "sweep-section").get_attribute("data-count")
                assert count == "70", count
                if i:
                    sweep.append(float(ms))
                time.sleep(0.2)
        finally:
            driver.quit()
    return first, sweep


def training_pids() -> list[int]:
    done = subprocess.run(["pgrep", "-f", TRAINING], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()]


def describe(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (f"median {statistics.median(ordered):.0f} ms, p90 {p90:.0f} ms, min {ordered[0]:.0f} ms, "
            f"max {ordered[-1]:.0f} ms (n = {len(ordered)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=30, help="uploads timed (one sample each)")
    parser.add_argument("--sweeps", type=int, default=5, help="full sweeps timed")
    parser.add_argument("--pause-training", action="store_true",
                        help=f"SIGSTOP processes matching {TRAINING!r} while measuring (SIGCONT after)")
    parser.add_argument("--out", help="also write the Markdown section here")
    args = parser.parse_args()
    exit_on_sigterm()
    log = Path(tempfile.mkdtemp(prefix="web_bench_")) / "server.log"
    server = Service(log, model_repository=ROOT / "models")
    try:
        server.wait_ready()
        pids = training_pids() if args.pause_training else []
        with Paused(pids):
            progress(f"measuring {args.uploads} uploads and {args.sweeps} sweeps")
            first, sweep = measure(server.url, args.uploads, args.sweeps)
    finally:
        server.stop()
    chromium = subprocess.run([shutil.which("chromium") or "chromium", "--version"], capture_output=True, text=True,
                              check=False).stdout.strip()
    lines = header("The A/B workbench page (headless Chromium, CPU)", ("onnxruntime", "selenium"), [
        f"Browser: {chromium}; server: `rbn-serve serve` on the shipped bundles, `--providers cpu`, same machine",
        f"Training jobs paused while measuring: {'yes' if pids else 'no'}",
    ])
    lines += [
        "| what | target | measured |",
        "|---|---|---|",
        f"| first result on screen after an upload (file input change → the frame after both arms render) | ≤ 300 ms | {describe(first)} |",
        f"| full sweep, 14 corruptions × 5 severities + the clean run (click → 14 plots drawn) | ≤ 3 s | {describe(sweep)} |",
        "",
        "Raw (ms): " + json.dumps({"first_result": [round(v, 1) for v in first], "sweep": [round(v, 1) for v in sweep]}),
    ]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
