"""`rbn`: train, fine-tune, export, bundle and evaluate models, compare the arms over seeds (validate bundles with `rbn-serve validate`). Errors print one line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _train(args) -> None:
    import torch

    from rbn.experiments.train import Recipe, train

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe(arch=args.arch, norm=args.norm, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    out = Path(args.out or f"runs/{args.arch}-{args.norm}-s{args.seed}")
    final = train(recipe, out, data_path=args.data, device=args.device)
    print(f"trained {out}: test accuracy {final['history'][-1]['test_accuracy']:.4f}")


def _finetune_folder(args) -> None:
    from rbn.experiments.folder_training import FolderRecipe, finetune_folder

    if not args.image_folder:
        raise UsageError("--model takes --data DIR (an ImageFolder: one sub-folder per class)")
    options = {"seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "calibration_lr": args.calibration_lr}
    recipe = FolderRecipe(model=args.model, weights=args.weights, data=args.image_folder, val_data=args.val_data, **options)
    out = Path(args.out or f"runs/{args.model.replace(':', '-')}-ft-s{args.seed}")
    result = finetune_folder(recipe, out)
    print(f"fine-tuned {recipe.epochs} epochs on {result['train_samples']} images into {out / 'final.pt'}: "
          f"validation accuracy {result['history'][-1]['val_accuracy']:.4f} ({result['val_samples']} images); "
          f"bundle it with: rbn bundle --model {args.model} --weights {out / 'final.pt'} --labels {out / 'labels.txt'} --name NAME")


def _finetune(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model or args.image_folder:
        if args.checkpoint:
            raise UsageError("give either a checkpoint written by `rbn train` or --model SPEC --data DIR")
        return _finetune_folder(args)
    if not args.checkpoint:
        raise UsageError("give a BN checkpoint written by `rbn train`, or --model SPEC [--weights FILE] --data DIR")
    from rbn.experiments.finetune import finetune, recipe_for

    options = {"seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "calibration_lr": args.calibration_lr}
    options |= {"warmup_epochs": args.warmup_epochs, "train_samples": args.train_samples, "test_samples": args.test_samples}
    recipe = recipe_for(args.checkpoint, **options)
    out = Path(args.out or f"runs/{Path(args.checkpoint).stem}-ft-s{args.seed}")
    keep = {int(k) for k in args.keep.split(",") if k.strip()} if args.keep else set()
    final = finetune(recipe, out, resume=args.resume, keep=keep, stop_after=args.stop_after, data_path=args.data, device=args.device)
    done = final["recipe"]["finetuned_epochs"]
    accuracy = f": test accuracy {final['history'][-1]['test_accuracy']:.4f}" if final["history"] else ""
    where = out / "final.pt" if done == recipe.epochs else out / "last.pt"
    print(f"fine-tuned {done}/{recipe.epochs} epochs into {where}{accuracy}")


class UsageError(ValueError):
    """The command line asks for something inconsistent; the message says what to give."""


def _intake(args):
    """--model SPEC [--weights FILE] -> rbn.library.intake.Intake (None when --model is not given)."""
    if not getattr(args, "model", None):
        if getattr(args, "weights", None):
            raise UsageError("--weights needs --model (which architecture to load them into)")
        return None
    from rbn.library.intake import load_model

    intake = load_model(args.model, args.weights)
    for note in intake.notes:
        print(f"note: {note}", file=sys.stderr)
    return intake


def _checkpoint_or_model(args) -> None:
    if bool(args.checkpoint) == bool(args.model):
        raise UsageError("give either a checkpoint written by `rbn train` or --model SPEC [--weights FILE]")


def _export(args) -> None:
    from rbn.library.export import export_onnx

    _checkpoint_or_model(args)
    if args.model:
        intake = _intake(args)
        model, shape = intake.model, intake.input_shape
    else:
        from rbn.experiments.release import INPUT_SHAPE, load_checkpoint

        model, shape = load_checkpoint(args.checkpoint)[0], INPUT_SHAPE
    data = export_onnx(model, args.out, input_shape=shape, folded=not args.unfolded)
    print(f"wrote {args.out} ({len(data)} bytes)")
    if not args.unfolded:
        import torch

        from rbn.library.fold import unfolded_norms

        for layer, why in unfolded_norms(model, torch.randn(2, *shape)).items():
            print(f"not folded: {layer}: {why}", file=sys.stderr)


def _convert(args) -> None:
    import torch

    from rbn.library.convert import convert_bn_to_rbn
    from rbn.experiments.model_bundle import conversion_error

    intake = _intake(args)
    before = __import__("copy").deepcopy(intake.model)
    converted = convert_bn_to_rbn(intake.model)
    error = conversion_error(before, intake.model, intake.input_shape)
    torch.save({"state_dict": intake.model.state_dict(), "model": args.model, "converted": converted}, args.out)
    print(f"wrote {args.out}: {len(converted)} BatchNorm2d layers converted to RBN, max |logit difference| {error:.2g}; "
          f"load it with --model {args.model} --weights {args.out}")


def _read_labels(path: str | None) -> list[str] | None:
    if not path:
        return None
    text = Path(path).read_text()
    return json.loads(text) if text.lstrip().startswith("[") else [line.strip() for line in text.splitlines() if line.strip()]


def _bundle_model(args) -> None:
    from rbn.experiments import model_bundle
    from rbn.experiments.release import _git_commit

    labels = _read_labels(args.labels)
    common = {"calibration_data": args.calibration_data, "calibration_limit": args.calibration_limit, "commit": _git_commit()}
    if args.pair:
        prefix = args.name or args.model.replace(":", "-").replace(".", "-").lower()
        for path in model_bundle.bundle_pair(args.model, args.repository, prefix, weights=args.weights, labels=labels, **common):
            print(f"wrote bundle {path}")
        return
    if not args.name:
        raise UsageError("--name is required (or --pair)")
    intake = _intake(args)
    labels = labels or model_bundle.default_labels(intake)
    path = model_bundle.bundle_model(intake, args.repository, args.name, labels, baseline=args.baseline, version=args.version, **common)
    print(f"wrote bundle {path}")


def _bundle(args) -> None:
    _checkpoint_or_model(args)
    if args.model:
        return _bundle_model(args)
    if args.pair or args.calibration_data:
        raise UsageError("--pair and --calibration-data take --model SPEC")
    if not args.name:
        raise UsageError("--name is required")
    from rbn.experiments.release import bundle_from_checkpoint

    from rbn.experiments.evaluate import summary

    evaluation = summary(json.loads(Path(args.evaluation).read_text())) if args.evaluation else None
    path = bundle_from_checkpoint(args.checkpoint, args.repository, args.name, args.baseline, args.version, evaluation, args.data)
    print(f"wrote bundle {path}")


def _evaluate_folder(args) -> None:
    from rbn.experiments.folder_training import evaluate_folder

    if not (args.model and args.image_folder) or args.models:
        raise UsageError("an ImageFolder evaluation takes --model SPEC [--weights FILE] --data DIR (and no positional models)")
    result = evaluate_folder(_intake(args), args.image_folder, args.val_data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.model.replace(":", "-").replace("/", "-")
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(f"{args.model}: accuracy {result['accuracy']:.4f} on {result['samples']} images; wrote {out / (name + '.json')}")


def _evaluate(args) -> None:
    if args.model or args.image_folder:
        return _evaluate_folder(args)
    if not args.models:
        raise UsageError("give bundle folders, .onnx files or checkpoints, or --model SPEC --data DIR")
    from rbn.experiments.evaluate import EvalConfig, OnnxClassifier, evaluate

    config = EvalConfig(corruption_samples=args.corruption_samples, calibration_samples=args.calibration_samples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for source in args.models:
        name, onnx_bytes, meta = _load_for_eval(Path(source))
        print(f"== {name}")
        result = evaluate(OnnxClassifier(onnx_bytes, threads=args.threads), config, args.data)
        doc = {"model": name, "source": str(source), **meta, "config": vars(config) | {"families": list(config.families)}, **result.to_json(), "score_samples": result.score_samples}
        (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
        print(f"wrote {out / (name + '.json')}")


def _load_for_eval(source: Path) -> tuple[str, bytes, dict]:
    """A bundle folder, an .onnx file, or a training checkpoint (exported in memory)."""
    from rbn.contract.bundle import onnx_path, validate_bundle

    if source.is_dir():
        meta = validate_bundle(source)
        info = {"norm": meta.norm, "seed": meta.provenance.seed if meta.provenance else None}
        return meta.name, onnx_path(source, meta.version).read_bytes(), info
    if source.suffix == ".onnx":
        return source.stem, source.read_bytes(), {"norm": None, "seed": None}
    from rbn.library.export import export_onnx
    from rbn.experiments.release import INPUT_SHAPE, load_checkpoint

    model, recipe = load_checkpoint(source)
    name = f"{recipe['arch']}-{recipe['norm']}-s{recipe['seed']}"
    info = {"norm": recipe["norm"], "seed": recipe["seed"]}
    if "finetuned_epochs" in recipe:  # written by `rbn finetune`: say so, and do not pose as a from-scratch run
        name = f"{recipe['arch']}-{recipe['norm']}-ft-s{recipe['seed']}-e{recipe['finetuned_epochs']}"
        keys = ("source", "source_sha256", "source_seed", "epochs", "finetuned_epochs", "lr", "calibration_lr")
        info["finetune"] = {k: recipe.get(k) for k in keys}
    return name, export_onnx(model, input_shape=INPUT_SHAPE), info


def _paired(args) -> None:
    from rbn.experiments import data as fmnist
    from rbn.experiments import paired
    from rbn.experiments.evaluate import EvalConfig, OnnxClassifier

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [Path(c) for c in args.checkpoints if args.force or not (out / f"{_checkpoint_name(Path(c))}.npz").exists()]
    if todo:
        test = fmnist.load_split("test", args.data)
        config = EvalConfig(corruption_samples=args.corruption_samples)
        sets = paired.corrupted_sets(test.images[: config.corruption_samples], seed=config.seed)
        for source in todo:
            name, onnx_bytes, meta = _load_for_eval(source)
            classifier = OnnxClassifier(onnx_bytes, threads=args.threads)
            result = paired.correctness(name, meta["norm"], meta["seed"], lambda x: classifier.predict(x).labels,
                                        test.images, test.labels, sets)
            result.save(out / f"{name}.npz")
            print(f"{name}: clean {result.accuracy(paired.CLEAN):.4f}, mean corruption {result.accuracy(paired.MEAN):.4f}")
    rbn_models, bn_models = paired.load_all(out)
    if not rbn_models:
        raise FileNotFoundError(f"{out}: no correctness files")
    rows = paired.report(rbn_models, bn_models, draws=args.draws)
    (out / "paired.json").write_text(json.dumps({"seeds": [c.seed for c in rbn_models], "draws": args.draws,
                                                 "rows": paired.as_json(rows)}, indent=1))
    (out / "paired.md").write_text(paired.markdown(rows, [c.seed for c in rbn_models]))
    print((out / "paired.md").read_text())


def _checkpoint_name(source: Path) -> str:
    """The name `_load_for_eval` gives a from-scratch checkpoint, without loading it (rbn train's file names)."""
    return source.stem


def _report(args) -> None:
    from rbn.experiments.report import write_report

    write_report(Path(args.results), Path(args.out))
    print(f"wrote {args.out}")


MODEL_HELP = ("resnet20, resnet50 (project ResNets, BN; -rbn for RBN), efficientnet-lite0 (pretrained), "
              "torchvision:NAME, timm:NAME, or package.module:factory (docs/models.md)")


def _model_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", required=required, help=MODEL_HELP)
    p.add_argument("--weights", help="state-dict file for --model (official RBN checkpoints too)")


def _folder_arguments(p: argparse.ArgumentParser) -> None:
    # dest image_folder: the top-level --data (Fashion-MNIST's folder) keeps its own
    p.add_argument("--data", dest="image_folder", help="ImageFolder (DIR/<class>/<image>, or DIR/train + DIR/val) for --model")
    p.add_argument("--val-data", help="a second ImageFolder for validation (default: DIR/val, else a seeded 20%% split)")


def _device_arguments(p: argparse.ArgumentParser) -> None:
    """Where a training run computes (train, finetune)."""
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbn", description=__doc__)
    parser.add_argument("--data", help="Fashion-MNIST folder (default: RBN_FASHION_MNIST_DIR or the Debian package's)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model (resumes from OUT/last.pt)")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--norm", choices=["rbn", "bn"], required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    _device_arguments(p)
    p.add_argument("--out", help="run folder (default runs/<arch>-<norm>-s<seed>)")
    p.set_defaults(func=_train)

    p = sub.add_parser("finetune", help="BN checkpoint (or --model on --data DIR) -> RBN (function-preserving) -> brief fine-tune")
    p.add_argument("checkpoint", nargs="?", help="a BN checkpoint written by `rbn train` (Fashion-MNIST), or give --model and --data")
    _model_arguments(p)
    _folder_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="data order and augmentation")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01, help="peak learning rate (cosine to 0)")
    p.add_argument("--calibration-lr", type=float, help="peak learning rate of w_m, w_v, w_b (default: --lr)")
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--keep", default="0", help="comma-separated epochs to keep as OUT/epoch-K.pt (0: converted, not fine-tuned)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT (else an existing run is an error)")
    p.add_argument("--stop-after", type=int, help="stop after this epoch (resume later)")
    p.add_argument("--train-samples", type=int, help="first N training images only (smoke tests)")
    p.add_argument("--test-samples", type=int, help="first N test images for the per-epoch accuracy")
    _device_arguments(p)
    p.add_argument("--out", help="run folder (default runs/<checkpoint stem>-ft-s<seed>)")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("export", help="checkpoint or --model -> ONNX (logits, rbn_stats, rbn_channel_stats)")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint written by `rbn train` (or give --model)")
    p.add_argument("out")
    _model_arguments(p)
    p.add_argument("--unfolded", action="store_true", help="export the layer as written, not folded")
    p.set_defaults(func=_export)

    p = sub.add_parser("convert", help="--model (BN) -> the same model with every BatchNorm2d an exact RBN, saved as a state dict")
    _model_arguments(p, required=True)
    p.add_argument("--out", required=True, help="the state-dict file to write")
    p.set_defaults(func=_convert)

    p = sub.add_parser("bundle", help="checkpoint or --model -> bundle in the model repository (--pair: BN and its RBN conversion)")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint written by `rbn train` (or give --model)")
    _model_arguments(p)
    p.add_argument("--pair", action="store_true", help="--model is a BN model: write NAME-bn and NAME-rbn (its exact conversion, paired)")
    p.add_argument("--labels", help="class names: a JSON list or one per line (default: ImageNet's for 1000 classes)")
    p.add_argument("--calibration-data", help="ImageFolder of in-distribution images to fit the OOD score on (else: uncalibrated)")
    p.add_argument("--calibration-limit", type=int, help="use at most N images of --calibration-data (drawn at random)")
    p.add_argument("--name", help="bundle name (with --pair: the prefix; default from --model)")
    p.add_argument("--baseline", help="for an RBN model: its BN bundle's name")
    p.add_argument("--repository", default="models")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--evaluation", help="`rbn evaluate` JSON whose headline numbers go into model.json")
    p.set_defaults(func=_bundle)

    p = sub.add_parser("evaluate", help="clean, corruption and OOD evaluation -> JSON per model (--model --data: ImageFolder accuracy)")
    p.add_argument("models", nargs="*", help="bundle folders, .onnx files or checkpoints (Fashion-MNIST)")
    _model_arguments(p)
    _folder_arguments(p)
    p.add_argument("--out", default="results")
    p.add_argument("--corruption-samples", type=int, default=10_000)
    p.add_argument("--calibration-samples", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("paired", help="per-image correctness of from-scratch checkpoints -> RBN minus BN over seeds with intervals")
    p.add_argument("checkpoints", nargs="*", help="checkpoints to add (files already in OUT are kept unless --force)")
    p.add_argument("--out", default="results/paired")
    p.add_argument("--corruption-samples", type=int, default=2000, help="as the committed evaluations")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap draws")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--force", action="store_true", help="recompute checkpoints whose file exists")
    p.set_defaults(func=_paired)

    p = sub.add_parser("report", help="aggregate evaluation JSON over seeds -> Markdown + PNG plots")
    p.add_argument("results", help="folder of `rbn evaluate` JSON files")
    p.add_argument("--out", default="results/report.md")
    p.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rbn.contract.bundle import BundleError
    from rbn.experiments.data import DatasetError

    args = build_parser().parse_args(argv)
    errors: tuple[type[Exception], ...] = (DatasetError, BundleError, FileNotFoundError, UsageError)
    try:
        from rbn.experiments.finetune import FinetuneError
        from rbn.experiments.imagefolder import ImageFolderError
        from rbn.experiments.release import CheckpointError
        from rbn.library.export import ExportError
        from rbn.library.intake import IntakeError

        errors += (CheckpointError, FinetuneError, IntakeError, ImageFolderError, ExportError)
    except ImportError:  # torch not installed: only the torch-free commands work
        pass
    try:
        return args.func(args) or 0
    except errors as exc:
        print(f"rbn {args.command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # the [train] extra (torch, scikit-learn, ...) is not installed
        print(f"rbn {args.command}: needs the Python package {exc.name!r} of the [train] extra: run it as "
              f"./run.sh rbn {args.command} ... (installs the extra), or .venv/bin/pip install -e '.[train]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
