"""Decoding a phone-sized JPEG for a 224-px model: full decode + resize against the service's path
(libjpeg's DCT-domain downscale, Pillow's ``draft``), interleaved, one thread.

The photos are scikit-image's own (``chelsea``, ``astronaut`` cut to 4:3), upscaled to
``--size`` (default 4000x3000, 12 MP) with a bicubic filter and saved as JPEG at ``--quality`` 90;
a third adds per-pixel noise to the upscaled ``chelsea`` (a camera's file is larger and slower to
entropy-decode than a smooth upscaled one, and draft mode does not shorten entropy decoding).
Each variant takes the JPEG's bytes to the float32 (3, 224, 224) tensor the graph gets (ImageNet
convention: shorter side to 256, bilinear, centre crop 224, ImageNet mean/std):

- ``full decode + resize`` (before): every pixel decoded, then Image.resize straight to 341x256;
- ``full decode + reduce + resize``: every pixel decoded, then Image.reduce by a whole factor
  (``reducing_gap=3``) before the bilinear filter;
- ``draft decode (service)``: ``service.core.imaging.decode`` (header check and pixel limit, then
  ``rbn.contract.preprocess.prepare``: the JPEG decoded at 1/8 scale, 500x375) and the service's
  ``Normalizer``.

Per round every variant runs once per photo, the order rotating; the table has the median and the
25th-75th percentiles of the wall time over ``--rounds`` rounds, the median CPU time of the calling
thread (``time.thread_time``: what the work costs, less disturbed by other jobs on a shared machine
than the wall time), and how far each output is from the first variant's (mean and max absolute
difference in grey levels, before normalisation).

    .venv/bin/python bench/decode_224.py --rounds 30 --out /tmp/decode_224.md
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import emit, header, progress  # noqa: E402
from rbn.contract.bundle import InputSpec  # noqa: E402
from rbn.contract.preprocess import Normalizer, crop_geometry  # noqa: E402
from service.core.config import Settings  # noqa: E402
from service.core.imaging import decode  # noqa: E402

SPEC = InputSpec.imagenet(size=224)  # 256 -> 224, bilinear
MAX_PIXELS = Settings.model_fields["max_image_pixels"].default  # the service's default limit (16.8 MP)
NOISE = 6.0  # grey levels of per-pixel luminance noise in the third photo


def photos(size: tuple[int, int], quality: int) -> dict[str, bytes]:
    """scikit-image's photos, upscaled to ``size`` and saved as JPEG (baseline, 4:2:0, as cameras write)."""
    from skimage import data

    astronaut = data.astronaut()[64:448]  # 512x384: 4:3
    return {name: jpeg(pixels, quality, size, noise)
            for name, pixels, noise in (("chelsea", data.chelsea(), 0), ("astronaut", astronaut, 0),
                                        ("chelsea + noise", data.chelsea(), NOISE))}


def jpeg(pixels: np.ndarray, quality: int, size: tuple[int, int] | None = None, noise: float = 0.0) -> bytes:
    """uint8 (H, W, 3) pixels as a JPEG, upscaled (bicubic) to ``size`` first and grained by ``noise`` when given."""
    if size is not None:
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))
    if noise:  # sensor-like texture: an upscaled photo is smoother (smaller, faster to decode) than a camera's
        grain = np.random.default_rng(0).normal(0.0, noise, pixels.shape[:2])[..., None]
        pixels = np.clip(pixels + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def full_decode(raw: bytes, reducing_gap: float | None) -> np.ndarray:
    """Every pixel decoded, then resized (optionally through Image.reduce) and cropped: uint8 (3, H, W)."""
    image = Image.open(io.BytesIO(raw))
    image.load()
    image = ImageOps.exif_transpose(image).convert("RGB")
    scaled, (left, top) = crop_geometry(image.width, image.height, SPEC.resize_size, (SPEC.width, SPEC.height))
    image = image.resize(scaled, Image.Resampling.BILINEAR, reducing_gap=reducing_gap)
    pixels = np.asarray(image)[top : top + SPEC.height, left : left + SPEC.width]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (>= 20 for the published table)")
    parser.add_argument("--size", default="4000x3000", help="photo size WxH (default 12 MP)")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    progress(f"making the {width}x{height} JPEGs")
    jpegs = photos((width, height), args.quality)
    normalize = Normalizer(SPEC)
    variants: list[tuple[str, Callable[[bytes], np.ndarray]]] = [
        ("full decode + resize (before)", lambda raw: full_decode(raw, None)),
        ("full decode + reduce + resize", lambda raw: full_decode(raw, 3.0)),
        ("draft decode (service)", lambda raw: decode(raw, SPEC, MAX_PIXELS)),
    ]
    times = {(v, p): [] for v, _ in variants for p in jpegs}
    cpu = {(v, p): [] for v, _ in variants for p in jpegs}
    outputs = {}
    for name, fn in variants:  # warm-up, and the outputs compared below
        for photo, raw in jpegs.items():
            outputs[name, photo] = fn(raw)
            normalize(outputs[name, photo][None])
    for r in range(args.rounds):
        shift = r % len(variants)
        for name, fn in variants[shift:] + variants[:shift]:
            for photo, raw in jpegs.items():
                start, start_cpu = time.perf_counter(), time.thread_time()
                normalize(fn(raw)[None])
                cpu[name, photo].append(time.thread_time() - start_cpu)
                times[name, photo].append(time.perf_counter() - start)
        if (r + 1) % 10 == 0:
            progress(f"round {r + 1}/{args.rounds}")

    sizes = ", ".join(f"{p} {len(raw) / 1e6:.2f} MB" for p, raw in jpegs.items())
    lines = header("Decoding photos at 224 px", packages=("pillow", "numpy"), extra=[
        f"Photos: scikit-image's chelsea and astronaut (4:3 cut), bicubic-upscaled to {width}x{height}, "
        f"the third with luminance noise (sigma {NOISE:g} grey levels); JPEG quality {args.quality} ({sizes})",
        f"Target: {SPEC.resize_size} shorter side, bilinear, centre crop {SPEC.width}x{SPEC.height}, ImageNet mean/std; "
        "bytes in, float32 tensor out; one thread",
        f"{args.rounds} interleaved rounds (order rotating)",
    ])
    base = variants[0][0]
    lines += ["| photo | variant | median ms | p25-p75 ms | thread CPU ms (median) | speed-up (wall / CPU) "
              "| mean / max abs diff vs before (grey levels) |",
              "|---|---|---|---|---|---|---|"]
    for photo in jpegs:
        base_ms = float(np.median(times[base, photo])) * 1e3
        base_cpu = float(np.median(cpu[base, photo])) * 1e3
        for name, _ in variants:
            ms = np.asarray(times[name, photo]) * 1e3
            median, cpu_ms = float(np.median(ms)), float(np.median(cpu[name, photo])) * 1e3
            diff = np.abs(outputs[name, photo].astype(int) - outputs[base, photo].astype(int))
            lines.append(f"| {photo} | {name} | {median:.1f} | {np.percentile(ms, 25):.1f}-{np.percentile(ms, 75):.1f} "
                         f"| {cpu_ms:.1f} | {base_ms / median:.1f}x / {base_cpu / cpu_ms:.1f}x | {diff.mean():.2f} / {diff.max()} |")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
