"""RBN vs BN latency in ONNX Runtime (CPU), same architecture, runs interleaved in one process.

The BN model is exported the ordinary way (logits only; ORT fuses Conv+BN+ReLU); the RBN
model with the folded graph and `rbn_stats`. Also shown: BN with `rbn_stats` (what the service
serves as the baseline arm) and the unfolded RBN graph. Prints a Markdown table of medians.

    python bench/rbn_vs_bn_latency.py [--arch resnet20] [--threads 1] [--rounds 30]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

from rbn.library.export import export_onnx
from rbn.library.resnet import build


def plain_export(model: torch.nn.Module, shape: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.zeros(2, *shape),), buffer, dynamo=False, input_names=["input"],
            output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=18,
        )  # fmt: skip
    return buffer.getvalue()


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial norm and calibration weights, so no branch is a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for name, lo, hi in (("running_mean", -0.5, 0.5), ("running_var", 0.5, 2), ("weight", 0.5, 1.5), ("bias", -0.5, 0.5),
                                     ("center_weight", -0.3, 0.3), ("scale_weight", -1, 1), ("scale_bias", -1, 1)):  # fmt: skip
                    if hasattr(m, name):
                        t = getattr(m, name)
                        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model.eval()


def session(data: bytes, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Four sessions live side by side here: idle pools must not spin on each other's cores
    # (the service sets the same option).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def profile_by_op(data: bytes, x: np.ndarray, threads: int, runs: int = 200) -> dict[str, float]:
    """Microseconds per run spent in each operator type, from ONNX Runtime's own profiler."""
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        s = session(data, threads, os.path.join(tmp, "p"))
        for _ in range(runs):
            s.run(None, {"input": x})
        events = json.loads(open(s.end_profiling()).read())
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + e["dur"] / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))



def interleaved_ms(sessions: dict[str, ort.InferenceSession], x: np.ndarray, rounds: int, reps: int) -> dict[str, list[float]]:
    """Per session, ``rounds`` figures of milliseconds per run on ``x`` (each the mean of ``reps`` runs), the
    sessions taking turns within every round so that a noisy machine hits them alike; one warm-up run each."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for s in sessions.values():
        s.run(None, {"input": x})
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            for _ in range(reps):
                s.run(None, {"input": x})
            times[name].append((time.perf_counter() - start) / reps * 1e3)
    return times

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--profile", action="store_true", help="also print time per operator type (ORT profiler)")
    args = parser.parse_args()
    shape = (1, 28, 28) if args.arch == "resnet20" else (3, 224, 224)
    classes = 10 if args.arch == "resnet20" else 1000
    bn = randomize(build(args.arch, "bn", shape[0], classes))
    rbn = randomize(build(args.arch, "rbn", shape[0], classes))
    graphs = {
        "BN (ordinary export)": plain_export(bn, shape),
        "BN + rbn_stats": export_onnx(bn, input_shape=shape),
        "RBN folded": export_onnx(rbn, input_shape=shape),
        "RBN unfolded": export_onnx(rbn, input_shape=shape, folded=False),
    }
    sessions = {name: session(g, args.threads) for name, g in graphs.items()}
    print(f"{args.arch}, ONNX Runtime {ort.__version__} CPU, intra-op threads {args.threads}, "
          f"{platform.processor() or platform.machine()}, medians of {args.rounds} interleaved rounds\n")  # fmt: skip
    print("| batch | " + " | ".join(sessions) + " | RBN folded / BN |")
    print("|---" * (len(sessions) + 2) + "|")
    for batch in (int(b) for b in args.batches.split(",")):
        x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
        times = interleaved_ms(sessions, x, args.rounds, reps=max(1, 64 // batch))
        med = {name: statistics.median(t) for name, t in times.items()}
        base = med["BN (ordinary export)"]
        cells = " | ".join(f"{v:.3f} ms" for v in med.values())
        print(f"| {batch} | {cells} | {med['RBN folded'] / base:.2f} |")
    if args.profile:
        for batch in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
            print(f"\nTime per operator type at batch {batch} (µs per run, ORT profiler):\n")
            profiles = {name: profile_by_op(graphs[name], x, args.threads) for name in ("BN (ordinary export)", "RBN folded")}
            ops = sorted(set().union(*profiles.values()), key=lambda op: -profiles["RBN folded"].get(op, 0))
            print("| operator | BN (ordinary export) | RBN folded |\n|---|---|---|")
            for op in ops:
                print(f"| {op} | " + " | ".join(f"{profiles[n].get(op, 0):.1f}" for n in profiles) + " |")
            print("| total | " + " | ".join(f"{sum(p.values()):.1f}" for p in profiles.values()) + " |")


if __name__ == "__main__":
    main()
