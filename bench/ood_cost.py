"""What the OOD outputs cost inside ONNX Runtime: bundles (or output sets) side by side, interleaved.

Each variant is ``NAME=BUNDLE_DIR[:output,output,...]`` (default outputs: all of the graph's). Per
batch size, the variants run in turn for ``--rounds`` rounds (order rotating), each round timing
``--reps`` runs; the table has the median milliseconds per batch and the ratio to the first variant.
One intra-op thread, the service's session options otherwise (service.core.runtime.session_options).

    python bench/ood_cost.py --variant "0.1 bundle=/tmp/old/models/fmnist-resnet20-rbn" \\
        --variant "0.2 bundle=models/fmnist-resnet20-rbn" \\
        --variant "0.2, logits+rbn_stats only=models/fmnist-resnet20-rbn:logits,rbn_stats"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import emit, header, parse_ints  # noqa: E402
from rbn.contract.bundle import onnx_path, read_meta  # noqa: E402
from service.core.runtime import session_options  # noqa: E402


def session(bundle: Path) -> ort.InferenceSession:
    """The service's own session options (service.core.runtime), one intra-op thread."""
    meta = read_meta(bundle)
    return ort.InferenceSession(str(onnx_path(bundle, meta.version)), session_options(1), providers=["CPUExecutionProvider"])


def parse_variant(text: str) -> tuple[str, Path, list[str] | None]:
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=BUNDLE_DIR[:outputs], got {text!r}")
    folder, _, outputs = rest.partition(":")
    return name.strip(), Path(folder), outputs.split(",") if outputs else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", type=parse_variant, action="append", required=True)
    parser.add_argument("--batch", type=parse_ints, default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args(argv)
    variants = []
    for name, folder, outputs in args.variant:
        s = session(folder)
        variants.append((name, s, outputs or [o.name for o in s.get_outputs()]))
    lines = header("OOD outputs in ONNX Runtime (CPU, 1 intra-op thread)")
    lines += ["| variant | outputs fetched | batch | ms per batch (median) | ratio to the first |", "|---|---|---|---|---|"]
    for batch in args.batch:
        x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
        times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for name, s, outputs in order:
                s.run(outputs, {"input": x})  # warm
                start = time.perf_counter()
                for _ in range(args.reps):
                    s.run(outputs, {"input": x})
                times[name].append((time.perf_counter() - start) / args.reps * 1000)
        base = statistics.median(times[variants[0][0]])
        for name, _, outputs in variants:
            median = statistics.median(times[name])
            lines.append(f"| {name} | {', '.join(outputs)} | {batch} | {median:.3f} | {median / base:.3f} |")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
