"""Soak test (not in CI): a real server under mixed traffic, bad inputs included, for many minutes;
every minute its resident memory, the p50/p99 of the good requests, the worst ``/healthz`` wait,
and the answers by kind. The verdict: RSS growth from the end of the first minute to the end,
and whether p99 stayed stable (last minutes against the first ones).

    python bench/soak.py --minutes 30 --out /tmp/soak.md        # the server at this checkout
    python bench/soak.py --minutes 2 --root /tmp/worktree        # another checkout's server

The traffic: ``--concurrency`` closed-loop workers (asyncio + httpx, one process), each picking a
request at random: raw-PNG /predict (60%), two-file multipart /predict (10%), /v2 JSON infer (10%),
/ab with a corruption (5%), and bad inputs (15%): garbage bytes, a truncated PNG, a PNG flood of
20 000 empty chunks, a repeated Content-Length header... (see ``BAD``), a wrong API key, and a client
that hangs up mid-upload. Good requests must answer 200 with the right label for the sample; bad
ones their 4xx. Anything else (a 5xx that is not a deliberate 503) is counted as a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, SAMPLE_PNG, Service, emit, exit_on_sigterm, header, progress  # noqa: E402

KEY = "soak-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "fmnist-resnet20-rbn"
LABEL = "Ankle boot"


def _png_flood(chunks: int = 20_000) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(29 * 28))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"zzZz", b"") * chunks + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _v2_body() -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32",
                                   "data": [0.0] * 1568}]}).encode()


class Traffic:
    """The request mix; ``await one(client)`` sends one and returns (kind, ok, seconds)."""

    def __init__(self, port: int, rng: random.Random) -> None:
        self.port = port
        self.rng = rng
        self.png = SAMPLE_PNG.read_bytes()
        self.flood = _png_flood()
        self.v2 = _v2_body()
        photo = io.BytesIO()
        from PIL import Image

        Image.open(io.BytesIO(self.png)).convert("RGB").resize((600, 600)).save(photo, "JPEG", quality=90)
        self.photo = photo.getvalue()  # over inline_body_bytes: decoded in the pool

    async def one(self, client) -> tuple[str, bool, float]:
        roll = self.rng.random()
        start = time.perf_counter()
        if roll < 0.50:
            kind, ok = "predict", await self._predict(client, self.png)
        elif roll < 0.60:
            kind, ok = "predict_photo", await self._predict(client, self.photo, "image/jpeg")
        elif roll < 0.70:
            r = await client.post("/predict", files=[("file", ("a.png", self.png, "image/png"))] * 2, headers=AUTH)
            kind, ok = "multipart", r.status_code == 200 and [p["label"] for p in r.json()["predictions"]] == [LABEL] * 2
        elif roll < 0.80:
            r = await client.post(f"/v2/models/{MODEL}/infer", content=self.v2,
                                  headers={**AUTH, "Content-Type": "application/json"})
            kind, ok = "v2", r.status_code == 200 and r.json()["outputs"][0]["shape"][0] == 2
        elif roll < 0.85:
            r = await client.post("/ab?corruption=gaussian_noise&severity=3", content=self.png,
                                  headers={**AUTH, "Content-Type": "image/png"})
            kind, ok = "ab", r.status_code == 200
        else:
            kind, ok = await self._bad(client)
        return kind, ok, time.perf_counter() - start

    async def _predict(self, client, body: bytes, content_type: str = "image/png") -> bool:
        r = await client.post("/predict", content=body, headers={**AUTH, "Content-Type": content_type})
        return r.status_code == 200 and r.json()["predictions"][0]["label"] == LABEL

    async def _bad(self, client) -> tuple[str, bool]:
        which = self.rng.randrange(6)
        png = {**AUTH, "Content-Type": "image/png"}
        if which == 0:
            r = await client.post("/predict", content=b"not an image" * 100, headers=png)
            return "bad_garbage", r.status_code == 415
        if which == 1:
            r = await client.post("/predict", content=self.png[:100], headers=png)
            return "bad_truncated", r.status_code == 422
        if which == 2:
            r = await client.post("/predict", content=self.flood, headers=png)
            return "bad_png_flood", r.status_code == 422
        if which == 3:
            r = await client.post("/predict", content=self.png, headers={"Authorization": "Bearer wrong-key-000",
                                                                         "Content-Type": "image/png"})
            return "bad_key", r.status_code == 401
        if which == 4:
            answer = await asyncio.get_running_loop().run_in_executor(None, self._raw, (
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5\r\n"
                b"Content-Length: 6\r\nAuthorization: Bearer " + KEY.encode() + b"\r\nConnection: close\r\n\r\nabcde"))
            return "bad_header", answer.startswith(b"HTTP/1.1 400")
        await asyncio.get_running_loop().run_in_executor(None, self._hang_up)
        return "bad_hang_up", True

    def _raw(self, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(data)
            return s.recv(65536)

    def _hang_up(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n"
                      b"Authorization: Bearer %s\r\n\r\n" % (len(self.png), KEY.encode()) + self.png[: len(self.png) // 2])


class Minute:
    def __init__(self) -> None:
        self.latencies: list[float] = []  # good requests answered right
        self.kinds: Counter = Counter()
        self.failures: Counter = Counter()
        self.probe_worst = 0.0


async def run(port: int, minutes: float, concurrency: int, server: Service, seed: int) -> list[dict]:
    import httpx

    traffic = Traffic(port, random.Random(seed))
    rows: list[dict] = []
    current = Minute()
    stop = time.monotonic() + minutes * 60
    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < stop:
                try:
                    kind, ok, seconds = await traffic.one(client)
                except httpx.HTTPError as exc:
                    current.failures[type(exc).__name__] += 1
                    continue
                current.kinds[kind] += 1
                if not ok:
                    current.failures[kind] += 1
                elif not kind.startswith("bad_"):
                    current.latencies.append(seconds)

        async def every_minute() -> None:
            nonlocal current
            started = time.monotonic()
            index = 0
            while started + 60 * (index + 1) <= stop + 1:  # whole minutes only
                index += 1
                await asyncio.sleep(max(0.0, started + 60 * index - time.monotonic()))
                done, current = current, Minute()
                done.probe_worst = probe.worst_since_last()
                if probe.failures:
                    done.failures["healthz"] += probe.failures
                    probe.failures = 0
                rows.append(summarise(index, done, server.rss_mb()))
                progress(json.dumps(rows[-1]))

        probe = Probe(port)
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)), every_minute())
        finally:
            probe.close()
    return rows


PROBE = r"""
import http.client, sys, time
port = int(sys.argv[1])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
while True:
    start = time.perf_counter()
    try:
        conn.request("GET", "/healthz"); r = conn.getresponse(); r.read(); ok = r.status == 200
    except OSError:
        ok = False; conn.close(); conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    print(f"{time.perf_counter() - start:.6f} {int(ok)}", flush=True)
    time.sleep(0.1)
"""


class Probe:
    """GET /healthz every 100 ms from its own process (the load's event loop would delay it here)."""

    def __init__(self, port: int) -> None:
        import subprocess
        import threading

        self._proc = subprocess.Popen([sys.executable, "-c", PROBE, str(port)], stdout=subprocess.PIPE, text=True)
        self._worst = 0.0
        self.failures = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            wait, ok = line.split()
            self._worst = max(self._worst, float(wait))
            self.failures += ok == "0"

    def worst_since_last(self) -> float:
        worst, self._worst = self._worst, 0.0
        return worst

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


def summarise(index: int, minute: Minute, rss_mb: float) -> dict:
    lat = sorted(minute.latencies)

    def pct(q: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(q * (len(lat) - 1)))], 2) if lat else float("nan")

    return {"minute": index, "rss_mb": round(rss_mb, 1), "requests": sum(minute.kinds.values()),
            "good": len(lat), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "healthz_worst_ms": round(1000 * minute.probe_worst, 1), "failures": dict(minute.failures),
            "bad": sum(v for k, v in minute.kinds.items() if k.startswith("bad_"))}


def markdown(rows: list[dict], minutes: float, concurrency: int) -> list[str]:
    lines = ["| minute | RSS MB | requests | good answered | bad inputs | p50 ms | p99 ms | worst /healthz ms | failures |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        failures = ", ".join(f"{k} {v}" for k, v in r["failures"].items()) or "0"
        lines.append(f"| {r['minute']} | {r['rss_mb']} | {r['requests']} | {r['good']} | {r['bad']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['healthz_worst_ms']} | {failures} |")
    if len(rows) >= 2:
        growth = rows[-1]["rss_mb"] - rows[0]["rss_mb"]
        k = max(1, len(rows) // 5)
        first = statistics.median(r["p99_ms"] for r in rows[:k])
        last = statistics.median(r["p99_ms"] for r in rows[-k:])
        total_fail = sum(sum(r["failures"].values()) for r in rows)
        lines += ["", f"RSS growth from the end of minute 1 to the end: **{growth:+.1f} MB** "
                      f"(max {max(r['rss_mb'] for r in rows)} MB, min {min(r['rss_mb'] for r in rows)} MB). "
                      f"p99 of good requests: median of the first {k} minute(s) {first:.1f} ms, of the last {k} {last:.1f} ms. "
                      f"Failures (a wrong answer, an unexpected status, a transport error): {total_fail}. "
                      f"{sum(r['requests'] for r in rows)} requests, {concurrency} closed-loop clients, {minutes:g} minutes."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose server runs (default: this one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the Markdown report here (default: stdout)")
    args = p.parse_args(argv)
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        # the key through the environment, as an operator would pass a secret (never on a command line)
        server = Service(Path(tmp) / "server.log", root=args.root, env={"RBN_SERVE_API_KEY": KEY},
                         model_repository=ROOT / "models")
        port = server.port
        try:
            server.wait_ready()
            rows = asyncio.run(run(port, args.minutes, args.concurrency, server, args.seed))
        finally:
            server.stop()
            log = server.log()
    lines = header(f"Soak: {args.minutes:g} minutes of mixed traffic", ("onnxruntime", "numpy", "uvicorn"))
    lines += [f"- Server checkout: `{args.root}`; log lines at ERROR or above: "
              f"{sum(' ERROR ' in ln or ' CRITICAL ' in ln for ln in log.splitlines())}", ""]
    lines += markdown(rows, args.minutes, args.concurrency)
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
