"""Aggregate `rbn evaluate` JSON files over seeds: a Markdown table (mean ± std) and PNG plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from rbn.experiments.evaluate import far_ood_names, relative_corruption_error

# The groups are the models' norms (model.json's and the evaluation files' `norm`), shown as RBN / BN.
# "Arm" is the service's word for /ab's two roles (`rbn`, `baseline`: the BN bundle an RBN bundle
# names); a table here compares norms over seeds, not two served arms, so it keeps the norm's name.
NORMS = ("rbn", "bn")


def load_results(folder: Path) -> dict[str, list[dict]]:
    """norm -> list of per-seed result documents, sorted by seed."""
    by_norm: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("norm") in NORMS:
            by_norm[doc["norm"]].append(doc)
    for docs in by_norm.values():
        docs.sort(key=lambda d: d.get("seed") or 0)
    return dict(by_norm)


def _ms(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def paired_ce(by_norm: dict[str, list[dict]]) -> list[dict[str, float]]:
    """Relative corruption error of each RBN seed against the BN run of the same seed."""
    bn_by_seed = {d.get("seed"): d for d in by_norm.get("bn", [])}
    return [relative_corruption_error(d, bn_by_seed[d.get("seed")]) for d in by_norm.get("rbn", []) if d.get("seed") in bn_by_seed]


def _set_label(name: str) -> str:
    return name.replace("far_ood_", "far-OOD ").replace("clean_test", "clean test").replace("_", " ")


def markdown(by_norm: dict[str, list[dict]]) -> str:
    norms = [a for a in NORMS if a in by_norm]
    families = list(by_norm[norms[0]][0]["corruption_accuracy"])
    seeds = {a: [d.get("seed") for d in by_norm[a]] for a in norms}
    lines = [
        "| metric | " + " | ".join(f"{a.upper()} (seeds {', '.join(map(str, seeds[a]))})" for a in norms) + " |",
        "|---" * (len(norms) + 1) + "|",
    ]

    def row(label: str, get, scale: float = 100.0, digits: int = 2) -> None:
        lines.append(f"| {label} | " + " | ".join(_ms([get(d) for d in by_norm[a]], scale, digits) for a in norms) + " |")

    row("clean accuracy (%)", lambda d: d["clean_accuracy"])
    row("mean corruption accuracy (%)", lambda d: d["mean_corruption_accuracy"])
    ce = paired_ce(by_norm)
    if ce:
        lines.append("| relative corruption error (BN = 100) | " + _ms([c["mean"] for c in ce], 100, 1) + " | 100 |")
    served = by_norm[norms[0]][0]["calibration"].get("method", "rms_z")
    far = far_ood_names(by_norm[norms[0]][0])
    for name in far:
        row(f"{_set_label(name)}: AUROC of the served score", lambda d, n=name: d["ood"][n]["auroc"], 1.0, 4)
    row("mean corruption AUROC of the served score", lambda d: np.mean([d["ood"][f]["auroc"] for f in families]), 1.0, 3)
    row("flagged at the served threshold: clean test (%)", lambda d: d["ood"]["clean_test"]["flag_rate"])
    for name in far:
        row(f"flagged at the served threshold: {_set_label(name)} (%)", lambda d, n=name: d["ood"][n]["flag_rate"])
    row("flagged at the served threshold: corrupted, mean over families (%)", lambda d: np.mean([d["ood"][f]["flag_rate"] for f in families]))
    if all("ood_methods" in d for a in norms for d in by_norm[a]):
        lines += ["", f"Every OOD score on every set (served: `{served}`; each score's threshold is its own clean "
                  "95th percentile on held-out training images; FPR at 95% TPR and flagged share in %):", ""]
        lines.append("| set | score | " + " | ".join(f"{a.upper()} AUROC" for a in norms) + " | "
                     + " | ".join(f"{a.upper()} FPR95 %" for a in norms) + " | " + " | ".join(f"{a.upper()} flagged %" for a in norms) + " |")
        lines.append("|---" * (3 * len(norms) + 2) + "|")
        methods = list(by_norm[norms[0]][0]["ood_methods"])
        for name in ["clean_test", *far, "mean_corruption_auroc"]:
            for m in methods:
                cells = []
                if name == "clean_test":
                    cells = ["—"] * (2 * len(norms))
                    cells += [_ms([d["ood_methods"][m]["clean_test"]["flag_rate"] for d in by_norm[a]], 100.0, 1) for a in norms]
                elif name == "mean_corruption_auroc":
                    cells = [_ms([d["ood_methods"][m]["mean_corruption_auroc"] for d in by_norm[a]], 1.0, 3) for a in norms]
                    cells += ["—"] * (2 * len(norms))
                else:
                    cells = [_ms([d["ood_methods"][m][name]["auroc"] for d in by_norm[a]], 1.0, 4) for a in norms]
                    cells += [_ms([d["ood_methods"][m][name]["fpr_at_95_tpr"] for d in by_norm[a]], 100.0, 1) for a in norms]
                    cells += [_ms([d["ood_methods"][m][name]["flag_rate"] for d in by_norm[a]], 100.0, 1) for a in norms]
                label = f"corrupted test, mean over {len(families)} families" if name == "mean_corruption_auroc" else _set_label(name)
                score = f"**{m}**" if m == served else m
                lines.append(f"| {label} | {score} | " + " | ".join(cells) + " |")
    if all("ood_validation" in d for a in norms for d in by_norm[a]):
        lines += ["", "Validation AUROC (generated OOD vs held-out clean training images; what the served score was chosen on), "
                  "worst and mean over the validation sets:", ""]
        lines.append("| score | " + " | ".join(f"{a.upper()} worst | {a.upper()} mean" for a in norms) + " |")
        lines.append("|---" * (2 * len(norms) + 1) + "|")
        for m in by_norm[norms[0]][0]["ood_validation"]:
            cells = []
            for a in norms:
                cells.append(_ms([min(d["ood_validation"][m].values()) for d in by_norm[a]], 1.0, 4))
                cells.append(_ms([np.mean(list(d["ood_validation"][m].values())) for d in by_norm[a]], 1.0, 4))
            lines.append(f"| {f'**{m}**' if m == served else m} | " + " | ".join(cells) + " |")
    lines += ["", "Per corruption family (accuracy % averaged over severities 1-5; OOD AUROC and the share flagged at the served threshold, severities pooled):", ""]
    lines.append("| family | " + " | ".join(f"{a.upper()} acc" for a in norms) + " | " + " | ".join(f"{a.upper()} AUROC" for a in norms)
                 + " | " + " | ".join(f"{a.upper()} flagged %" for a in norms) + " |")
    lines.append("|---" * (3 * len(norms) + 1) + "|")
    for f in families:
        accs = [_ms([np.mean(d["corruption_accuracy"][f]) for d in by_norm[a]]) for a in norms]
        aucs = [_ms([d["ood"][f]["auroc"] for d in by_norm[a]], 1.0, 3) for a in norms]
        flags = [_ms([d["ood"][f]["flag_rate"] for d in by_norm[a]], 100.0, 1) for a in norms]
        lines.append(f"| {f} | " + " | ".join(accs + aucs + flags) + " |")
    return "\n".join(lines) + "\n"


def plot(by_norm: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = [a for a in NORMS if a in by_norm]
    families = list(by_norm[norms[0]][0]["corruption_accuracy"])
    written = []
    cols = 5
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), sharey=True)
    for ax, family in zip(axes.flat, families):
        for norm, color in zip(norms, ("tab:red", "tab:blue")):
            acc = np.array([d["corruption_accuracy"][family] for d in by_norm[norm]]) * 100
            sev = np.arange(1, acc.shape[1] + 1)
            ax.errorbar(sev, acc.mean(0), yerr=acc.std(0, ddof=1) if len(acc) > 1 else None, label=norm.upper(), color=color, marker="o", ms=3, capsize=2)
        ax.set_title(family, fontsize=9)
        ax.set_xticks(sev)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    axes.flat[0].legend()
    fig.supxlabel("severity")
    fig.supylabel("accuracy (%)")
    fig.tight_layout()
    path = out_dir / "accuracy_vs_severity.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)

    fig, axes = plt.subplots(1, len(norms), figsize=(6 * len(norms), 3.5), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        doc = by_norm[norm][0]
        samples = doc["score_samples"]
        threshold = doc["calibration"]["threshold"]
        clean = np.asarray(samples["clean"])
        # far-OOD scores run to hundreds: clip at a right edge a few clean spreads past the threshold
        high = threshold + 3 * (threshold - np.median(clean))
        bins = np.linspace(clean.min(), high, 60)
        clip = lambda v: np.minimum(np.asarray(v, float), high)  # noqa: E731
        ax.hist(clip(clean), bins=bins, alpha=0.6, density=True, label="clean test")
        ax.hist(clip(np.concatenate([samples[f] for f in families])), bins=bins, alpha=0.4, density=True, label="corrupted (all families)")
        far = [k for k in samples if k.startswith("far_ood_")]
        ax.hist(clip(np.concatenate([samples[k] for k in far])), bins=bins, alpha=0.5, density=True, label=f"far-OOD ({len(far)} sets)")
        ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold (clean p95)")
        ax.set_xlabel("score (clipped at the right edge)")
        ax.set_title(f"{norm.upper()} seed {doc.get('seed')}: OOD score")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "ood_score_histograms.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)
    return written


def write_report(results: Path, out: Path) -> None:
    by_norm = load_results(results)
    if not by_norm:
        raise FileNotFoundError(f"{results}: no evaluation JSON files with a norm of rbn or bn")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(by_norm))
    plot(by_norm, out.parent)
