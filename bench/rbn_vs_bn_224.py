"""RBN/BN latency at 224 px in ONNX Runtime (CPU): the project's ResNet-50 and pretrained EfficientNet-Lite0.

For each model, the BN network (weights as given: random-but-non-trivial norms for ResNet-50, the
ImageNet weights for Lite0) and its exact RBN conversion (same weights; calibration weights then set
to non-trivial values so no branch is a no-op) are exported three ways and timed interleaved in one
process: BN the ordinary way (logits only; ORT fuses Conv+BN+activation), BN + rbn_stats (the served
baseline arm) and RBN folded (the served RBN arm). Per round each graph runs once per batch size;
the table gives the median and interquartile range of the per-run times and the median of the
per-round RBN/BN ratio with its quartiles. ``--profile`` adds ORT's profiler: time per operator type.

    python bench/rbn_vs_bn_224.py [--models resnet50,efficientnet-lite0] [--batches 1,32] [--threads 2] [--rounds 15] [--profile]
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `python bench/rbn_vs_bn_224.py` as documented
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.rbn_vs_bn_latency import interleaved_ms, plain_export, profile_by_op, session  # noqa: E402
from rbn.library.convert import convert_bn_to_rbn  # noqa: E402
from rbn.library.export import export_onnx  # noqa: E402
from rbn.library.intake import build_model  # noqa: E402

SHAPE = (3, 224, 224)
GRAPHS = ("BN (ordinary export)", "BN + rbn_stats", "RBN folded")


def models(spec: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(BN, its RBN conversion with non-trivial calibration weights)."""
    import copy

    bn = build_model(spec).model.eval()
    if spec == "resnet50":  # random weights: give the norms trained-looking statistics
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in bn.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    rbn = copy.deepcopy(bn)
    convert_bn_to_rbn(rbn)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in rbn.modules():
            if hasattr(m, "center_weight"):
                m.center_weight.copy_((torch.rand(m.num_features, generator=g) - 0.5) * 0.2)
                m.scale_weight.copy_((torch.rand(m.num_features, generator=g) - 0.5) * 0.2)
    return bn, rbn.eval()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,efficientnet-lite0")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--profile", action="store_true", help="time per operator type at the largest batch (ORT profiler)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"ONNX Runtime {ort.__version__} CPU, intra-op threads {args.threads}, {platform.processor() or platform.machine()}, "
          f"{args.rounds} interleaved rounds; times: median [p25, p75]\n")
    for spec in args.models.split(","):
        bn, rbn = models(spec)
        graphs = {GRAPHS[0]: plain_export(bn, SHAPE), GRAPHS[1]: export_onnx(bn, input_shape=SHAPE),
                  GRAPHS[2]: export_onnx(rbn, input_shape=SHAPE)}
        sessions = {name: session(g, args.threads) for name, g in graphs.items()}
        print(f"### {spec}\n")
        print("| batch | " + " | ".join(GRAPHS) + " | RBN folded / BN [p25, p75] | RBN folded / BN + rbn_stats |")
        print("|---" * (len(GRAPHS) + 3) + "|")
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, *SHAPE), dtype=np.float32)
            times = interleaved_ms(sessions, x, args.rounds, reps=max(1, 8 // batch))
            ratio = [r / b for r, b in zip(times[GRAPHS[2]], times[GRAPHS[0]])]
            ratio_stats = [r / b for r, b in zip(times[GRAPHS[2]], times[GRAPHS[1]])]
            cells = " | ".join("{1:.1f} ms [{0:.1f}, {2:.1f}]".format(*quartiles(times[n])) for n in GRAPHS)
            r = quartiles(ratio)
            print(f"| {batch} | {cells} | {r[1]:.2f} [{r[0]:.2f}, {r[2]:.2f}] | {quartiles(ratio_stats)[1]:.2f} |", flush=True)
        if args.profile:
            batch = max(batches)
            x = np.random.default_rng(0).standard_normal((batch, *SHAPE), dtype=np.float32)
            profiles = {n: profile_by_op(graphs[n], x, args.threads, runs=3) for n in (GRAPHS[0], GRAPHS[2])}
            ops = sorted(set().union(*profiles.values()), key=lambda op: -profiles[GRAPHS[2]].get(op, 0))
            print(f"\n{spec}, time per operator type at batch {batch} (ms per run, ORT profiler, 3 runs):\n")
            print(f"| operator | {GRAPHS[0]} | {GRAPHS[2]} |\n|---|---|---|")
            for op in ops:
                print(f"| {op} | " + " | ".join(f"{profiles[n].get(op, 0) / 1e3:.1f}" for n in profiles) + " |")
            print("| total | " + " | ".join(f"{sum(p.values()) / 1e3:.1f}" for p in profiles.values()) + " |")
        print()


if __name__ == "__main__":
    main()
