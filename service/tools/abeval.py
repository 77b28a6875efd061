"""``rbn-serve ab-eval``: drive a running server's ``POST /ab`` with a folder of labelled images, every
chosen corruption x severity, and report both arms' accuracy and their agreement with Wilson 95%
intervals (a table on stdout; CSV, JSON and a PNG plot in the output folder).

A client: the standard library's HTTP client in worker threads, Pillow for the plot (both in the base
install; no torch; numpy only because rbn.contract.corruptions, where the corruption names live, imports it).
Images are sent as they are on disk; the server decodes, preprocesses and corrupts them exactly as for
any other /ab request, so these figures are what the server computes.

Layouts read: torchvision's ImageFolder (one sub-folder per class; the folder name matched to the
model's labels ignoring case, spaces and punctuation, since a folder cannot be named ``T-shirt/top``),
or a folder with a ``labels.json`` listing ``{"file": ..., "label": index}`` (the shipped samples).
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TextIO

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from rbn.contract.corruptions import CORRUPTION_NAMES, SEVERITIES
from service.core.abstats import AbTally, rate
from service.core.answers import ArmsCorrect

CLEAN = "none"  # the row of uncorrupted images, as /ab/summary and the metrics name it
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
RETRIES = 5  # 503 answers (queue full, still loading) retried after Retry-After, this many times per request


class EvalError(Exception):
    """A problem the user can fix, reported as one line (exit 2 for the input, 1 for the server)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Item:
    path: Path
    label: int


@dataclass(frozen=True)
class Job:
    """One /ab request: images of one class under one corruption and severity (CLEAN, 0: none)."""

    corruption: str
    severity: int
    label: int
    items: tuple[Item, ...]


# --- the input folder -----------------------------------------------------------------------
def fold(name: str) -> str:
    """A class name as matched: lower case, letters and digits only ('T-shirt/top' -> 'tshirttop')."""
    return re.sub(r"[^0-9a-z]+", "", name.casefold())


def _check_image(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise EvalError(f"{path}: not an image we can read ({type(exc).__name__})", 2) from None


def collect(folder: Path, labels: list[str]) -> list[Item]:
    """The labelled images of ``folder`` (ImageFolder layout, or a labels.json), each checked to be an image."""
    if not folder.is_dir():
        raise EvalError(f"{folder}: not a folder", 2)
    listing = folder / "labels.json"
    if listing.is_file():
        items = [_listed(listing, n, entry, len(labels)) for n, entry in enumerate(_read_listing(listing))]
    else:
        known = {fold(name): i for i, name in enumerate(labels)}
        items = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = known.get(fold(sub.name))
            if label is None:
                raise EvalError(f"{sub}: class {sub.name!r} is not one of the model's labels ({', '.join(labels)})", 2)
            items += [Item(p, label) for p in sorted(sub.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if not items:
        raise EvalError(f"{folder}: no images (expected one sub-folder per class, or a labels.json)", 2)
    for item in items:
        if item.path.suffix.lower() not in IMAGE_SUFFIXES:
            raise EvalError(f"{item.path}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})", 2)
        _check_image(item.path)
    return items


def _read_listing(listing: Path) -> list:
    try:
        entries = json.loads(listing.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise EvalError(f"{listing}: not valid JSON ({exc})", 2) from None
    if not isinstance(entries, list):
        raise EvalError(f'{listing}: expected a list of {{"file": ..., "label": index}}', 2)
    return entries


def _listed(listing: Path, n: int, entry: object, classes: int) -> Item:
    """Entry ``n`` of a labels.json as an Item; a one-line input error (exit 2) for anything else."""
    file = entry.get("file") if isinstance(entry, dict) else None
    label = entry.get("label") if isinstance(entry, dict) else None
    if not isinstance(file, str) or not file:
        raise EvalError(f'{listing}: entry {n} has no "file" name', 2)
    # bool is an int to Python, but true/false is no class index
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < classes:
        raise EvalError(f"{listing}: label {label!r} of {file} is not a class index 0..{classes - 1}", 2)
    return Item(listing.parent / file, label)


def plan(items: list[Item], shifts: list[tuple[str, int]], batch: int) -> list[Job]:
    """Requests for every (corruption, severity) shift: each carries up to ``batch`` images of one class."""
    by_label: dict[int, list[Item]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    jobs = []
    for corruption, severity in shifts:
        for label, group in sorted(by_label.items()):
            jobs += [Job(corruption, severity, label, tuple(group[i : i + batch])) for i in range(0, len(group), batch)]
    return jobs


def shifts_for(corruptions: list[str], severities: list[int]) -> list[tuple[str, int]]:
    """(corruption, severity) pairs; CLEAN once, with severity 0."""
    unknown = [c for c in corruptions if c != CLEAN and c not in CORRUPTION_NAMES]
    if unknown:
        raise EvalError(f"unknown corruption {unknown[0]!r}; valid: {CLEAN}, {', '.join(CORRUPTION_NAMES)}", 2)
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise EvalError(f"severity {bad[0]} is not one of {', '.join(map(str, SEVERITIES))}", 2)
    return [(c, 0) for c in corruptions if c == CLEAN] + [(c, s) for c in corruptions if c != CLEAN for s in severities]


# --- the server -----------------------------------------------------------------------------
class Client:
    """Blocking HTTP to one server (thread-safe: a fresh connection per request)."""

    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> dict:
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in range(RETRIES + 1):
            request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = response.read()
            except urllib.error.HTTPError as exc:
                detail = _error_text(exc)
                if exc.code == 401:
                    raise EvalError(f"{self.url} needs an API key (--api-key, or RBN_SERVE_API_KEY): {detail}") from None
                if exc.code == 503 and attempt < RETRIES:
                    time.sleep(_retry_after(exc.headers.get("Retry-After")))
                    continue
                raise EvalError(f"{method} {path.partition('?')[0]} answered {exc.code}: {detail}") from None
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, a non-HTTP peer
                reason = getattr(exc, "reason", None) or exc or type(exc).__name__
                raise EvalError(f"cannot reach {self.url}: {reason}") from None
            try:
                return json.loads(answer)
            except ValueError:
                raise EvalError(f"{method} {path.partition('?')[0]} at {self.url} did not answer JSON: "
                                "is it an rbn-serve server?") from None
        raise AssertionError("unreachable")

    def ab(self, model: str, job: Job) -> list[dict]:
        """POST /ab with the job's images (multipart) -> the ``results`` list, one per image."""
        query = {"model": model, "label": str(job.label), "top_k": "1"}
        if job.corruption != CLEAN:
            query.update(corruption=job.corruption, severity=str(job.severity))
        body, content_type = multipart([(item.path.name, item.path.read_bytes()) for item in job.items])
        answer = self.request("POST", "/ab?" + urllib.parse.urlencode(query), body, content_type)
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(job.items):
            raise EvalError(f"POST /ab at {self.url} did not answer one result per image: is it an rbn-serve server?")
        return results


def _retry_after(value: str | None) -> float:
    """Seconds to wait before retrying a 503 (1 when Retry-After is absent or not a number; at most 10)."""
    try:
        return min(10.0, max(0.0, float(value or 1)))
    except ValueError:
        return 1.0


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read()).get("error")
    except (ValueError, AttributeError, OSError):
        return exc.reason or ""
    return (error.get("message") if isinstance(error, dict) else str(error)) or ""


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with one ``file`` field per (name, bytes)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, data in files:
        safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe}"\r\n'
                  f"Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def pair_for(models: dict, name: str | None) -> tuple[str, str, list[str]]:
    """From GET /models: the RBN model (``name`` or the primary), its loaded baseline and the labels."""
    listed = models.get("models") if isinstance(models, dict) else None
    if not isinstance(listed, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in listed):
        raise EvalError("GET /models did not answer rbn-serve's model list: is it an rbn-serve server?")
    chosen = name or models.get("primary")
    model = next((m for m in models["models"] if m["name"] == chosen), None)
    if model is None:
        raise EvalError(f"the server serves no model {chosen!r}; it serves {', '.join(m['name'] for m in models['models'])}", 2)
    if not model.get("baseline") or not model.get("baseline_loaded"):
        raise EvalError(f"model {chosen} has no loaded baseline on this server: /ab cannot compare it", 2)
    return model["name"], model["baseline"], model["labels"]


# --- progress, table, files -----------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr (redrawn at most 10 times a second; every 10% when not a terminal)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        # sys.stderr looked up now, not when this module was imported (it may have been replaced since)
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.tty = self.stream.isatty()
        self.lock = threading.Lock()
        self.next_tenth = 1

    def advance(self, images: int) -> None:
        with self.lock:
            self.done += images
            now = time.monotonic()
            finished = self.done >= self.total
            if self.tty and (now - self.last >= 0.1 or finished):
                self.last = now
                self.stream.write("\r" + self.line(now))
                if finished:
                    self.stream.write("\n")
            elif not self.tty and (finished or self.done * 10 >= self.next_tenth * self.total):
                self.next_tenth = self.done * 10 // self.total + 1
                self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        width = 30
        filled = width * self.done // max(1, self.total)
        elapsed = now - self.start
        speed = self.done / elapsed if elapsed > 0 else 0.0
        return f"ab-eval [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} images, {elapsed:.1f} s, {speed:.0f}/s"


def rows_of(tally: AbTally, shifts: list[tuple[str, int]]) -> list[dict]:
    """One row per shift, in plan order, with both arms' accuracy and the agreement as ``Rate``s:
    the counts of ``tally``, the same counting as the server's /ab/summary (every image is labelled)."""
    counted = {(r["corruption"], r["severity"]): r for r in tally.summary()["rows"]}
    nothing = rate(0, 0)
    rows = []
    for corruption, severity in dict.fromkeys(shifts):  # a shift named twice is one row
        row = counted.get((corruption, severity))
        accuracy = (row or {}).get("accuracy") or {"rbn": nothing, "baseline": nothing}
        rows.append({"corruption": corruption, "severity": severity, "images": row["comparisons"] if row else 0,
                     "rbn": accuracy["rbn"], "baseline": accuracy["baseline"],
                     "agreement": row["agreement"] if row else nothing})
    return rows


def _interval(r: dict) -> str:
    return f"{100 * r['value']:5.1f} [{100 * r['low']:5.1f}, {100 * r['high']:5.1f}]"


def format_table(rows: list[dict], model: str, baseline: str) -> str:
    """The table printed on stdout (percentages; Wilson 95% intervals in brackets)."""
    head = f"{'corruption':<18} {'sev':>3} {'images':>6}  {'RBN ' + model:<28} {'baseline ' + baseline:<28} {'RBN-base':>8}  {'agreement':<20}"
    lines = [head, "-" * len(head)]
    for row in rows:
        delta = 100 * (row["rbn"]["value"] - row["baseline"]["value"])
        severity = "-" if row["corruption"] == CLEAN else str(row["severity"])
        lines.append(f"{row['corruption']:<18} {severity:>3} {row['images']:>6}  {_interval(row['rbn']):<28} "
                     f"{_interval(row['baseline']):<28} {delta:>+8.1f}  {_interval(row['agreement']):<20}")
    corrupted = [r for r in rows if r["corruption"] != CLEAN]
    if corrupted:
        rbn = sum(r["rbn"]["successes"] for r in corrupted) / sum(r["images"] for r in corrupted)
        base = sum(r["baseline"]["successes"] for r in corrupted) / sum(r["images"] for r in corrupted)
        lines.append(f"{'all corrupted':<18} {'':>3} {sum(r['images'] for r in corrupted):>6}  {100 * rbn:5.1f}{'':<23} "
                     f"{100 * base:5.1f}{'':<23} {100 * (rbn - base):>+8.1f}")
    lines.append("accuracy and agreement in %, Wilson 95% intervals in brackets")
    return "\n".join(lines)


CSV_FIELDS = ("corruption", "severity", "images", "rbn_correct", "rbn_accuracy", "rbn_low", "rbn_high",
              "baseline_correct", "baseline_accuracy", "baseline_low", "baseline_high",
              "agree", "agreement", "agreement_low", "agreement_high")


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([r["corruption"], r["severity"], r["images"],
                             *(r[k][f] for k in ("rbn", "baseline", "agreement") for f in ("successes", "value", "low", "high"))])


def plot_png(rows: list[dict], path: Path, title: str) -> None:
    """Small multiples, one panel per corruption: both arms' accuracy against severity (clean as a dotted line)."""
    colours = {"rbn": (11, 99, 197), "baseline": (194, 65, 12)}
    clean = next((r for r in rows if r["corruption"] == CLEAN), None)
    names = list(dict.fromkeys(r["corruption"] for r in rows if r["corruption"] != CLEAN))
    panel_w, panel_h, columns = 220, 160, 5
    lines = max(1, -(-len(names) // columns))
    width, height = panel_w * columns, 56 + panel_h * lines
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(13)
    small = _font(11)
    draw.text((10, 8), title, fill="black", font=font)
    x0 = 10
    for arm, label in (("rbn", "RBN"), ("baseline", "baseline")):
        draw.line((x0, 40, x0 + 24, 40), fill=colours[arm], width=3)
        draw.text((x0 + 30, 33), label, fill="black", font=small)
        x0 += 110
    draw.line((x0, 40, x0 + 24, 40), fill=(120, 120, 120), width=1)
    draw.text((x0 + 30, 33), "clean (same colour, dotted)", fill="black", font=small)
    for n, name in enumerate(names):
        left, top = (n % columns) * panel_w, 56 + (n // columns) * panel_h
        ax_l, ax_r, ax_t, ax_b = left + 34, left + panel_w - 12, top + 22, top + panel_h - 24
        draw.text((left + 34, top + 4), name.replace("_", " "), fill="black", font=small)
        draw.rectangle((ax_l, ax_t, ax_r, ax_b), outline=(200, 200, 200))
        y = lambda p: ax_b - p * (ax_b - ax_t)  # noqa: E731 - a local scale
        for p in (0.0, 0.5, 1.0):
            draw.line((ax_l, y(p), ax_r, y(p)), fill=(230, 230, 230))
            draw.text((left + 4, y(p) - 7), f"{p:.1f}", fill=(90, 90, 90), font=small)
        panel = sorted((r for r in rows if r["corruption"] == name), key=lambda r: r["severity"])
        x = lambda s: ax_l + (s - 1) * (ax_r - ax_l) / 4  # noqa: E731
        for s in range(1, 6):
            draw.text((x(s) - 3, ax_b + 4), str(s), fill=(90, 90, 90), font=small)
        for arm in ("baseline", "rbn"):
            if clean is not None:
                level = y(clean[arm]["value"])
                for dash in range(int(ax_l), int(ax_r), 8):
                    draw.line((dash, level, min(dash + 3, ax_r), level), fill=colours[arm], width=1)
            points = [(x(r["severity"]), y(r[arm]["value"])) for r in panel]
            if len(points) > 1:
                draw.line(points, fill=colours[arm], width=2)
            for px, py in points:
                draw.ellipse((px - 2.5, py - 2.5, px + 2.5, py + 2.5), fill=colours[arm])
    image.save(path, "PNG", optimize=True)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


# --- the run --------------------------------------------------------------------------------
@dataclass
class Outcome:
    rows: list[dict]
    errors: list[str] = field(default_factory=list)


class _Counted(NamedTuple):
    """What ``AbTally.add`` reads of an /ab result (it counts the server's typed ``AbResult``s the same way)."""

    agree: bool
    correct: ArmsCorrect | None


def _counted(item: dict) -> _Counted:
    correct = item.get("correct")
    return _Counted(bool(item["agree"]), None if correct is None else ArmsCorrect(bool(correct["rbn"]), bool(correct["baseline"])))


def evaluate(client: Client, model: str, jobs: list[Job], shifts: list[tuple[str, int]], concurrency: int,
             progress: Progress | None) -> Outcome:
    """Run every job with ``concurrency`` requests in flight; count per shift. Stops at the first error."""
    tally = AbTally(max_cells=len(shifts))
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(client.ab, model, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                results = future.result()
            except CancelledError:
                continue
            except EvalError as exc:
                errors.append(str(exc))
                for other in futures:
                    other.cancel()
                continue
            tally.add(model, "", job.corruption, job.severity, [_counted(item) for item in results])
            if progress is not None:
                progress.advance(len(results))
    return Outcome(rows_of(tally, shifts), errors)


def run(folder: Path, server: str, model: str | None, corruptions: Iterable[str] | None,
        severities: Iterable[int] | None, concurrency: int, batch: int, api_key: str | None, out: Path,
        timeout: float = 60.0) -> int:
    """The command: 0 when every request succeeded, 1 on a server error, 2 on a problem with the input."""
    try:
        client = Client(server, api_key, timeout)
        name, baseline, labels = pair_for(client.request("GET", "/models"), model)
        items = collect(folder, labels)
        chosen = list(corruptions) if corruptions else [CLEAN, *CORRUPTION_NAMES]
        shifts = shifts_for(chosen, sorted(set(severities or SEVERITIES)))
        jobs = plan(items, shifts, batch)
        print(f"ab-eval: {len(items)} images x {len(shifts)} shifts = {len(items) * len(shifts)} comparisons of "
              f"{name} against {baseline} at {client.url}, {concurrency} requests at a time", file=sys.stderr)
        start = time.monotonic()
        outcome = evaluate(client, name, jobs, shifts, concurrency, Progress(len(items) * len(shifts)))
    except EvalError as exc:
        print(f"rbn-serve ab-eval: {exc}", file=sys.stderr)
        return exc.exit_code
    if outcome.errors:
        print(f"rbn-serve ab-eval: {len(outcome.errors)} request(s) failed, nothing written; first: {outcome.errors[0]}",
              file=sys.stderr)
        return 1
    elapsed = time.monotonic() - start
    print(format_table(outcome.rows, name, baseline))
    out.mkdir(parents=True, exist_ok=True)
    meta = {"server": client.url, "model": name, "baseline": baseline, "folder": str(folder), "images": len(items),
            "comparisons": len(items) * len(shifts), "seconds": round(elapsed, 2), "interval": "Wilson 95%"}
    (out / "ab-eval.json").write_text(json.dumps({**meta, "rows": outcome.rows}, indent=1) + "\n")
    write_csv(outcome.rows, out / "ab-eval.csv")
    plot_png(outcome.rows, out / "ab-eval.png", f"{name} vs {baseline}: accuracy by severity ({len(items)} images)")
    print(f"ab-eval: wrote {out / 'ab-eval.csv'}, {out / 'ab-eval.json'}, {out / 'ab-eval.png'} ({elapsed:.1f} s)",
          file=sys.stderr)
    return 0
