"""Fine-tune and evaluate any intake model on an ImageFolder, with its bundle's input spec.

``finetune_folder``: the model (``--model SPEC [--weights FILE]``) has every BatchNorm2d converted to
an exact RBN (rbn.library.convert: epoch 0 answers as the BN model did), then trains on the folder's
training images (the service's own preprocessing, rbn.experiments.imagefolder; random horizontal
flips) with SGD + Nesterov, cosine learning rate, the calibration weights on their own peak rate
(rbn.experiments.finetune.optimizer_groups). Writes ``OUT/final.pt`` (a state dict that
``--model SPEC --weights OUT/final.pt`` loads: its calibration weights make the intake convert the
architecture), ``OUT/labels.txt`` (the class folders, for ``rbn bundle --labels``) and
``OUT/history.json``.

``evaluate_folder``: accuracy (top-1, top-5 where there are more than 5 classes, per class) of the
exported ONNX graph -- what the service runs -- on the folder's validation images.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rbn.contract.bundle import LOGITS_NAME
from rbn.experiments import imagefolder
from rbn.experiments.finetune import FinetuneError, optimizer_groups
from rbn.experiments.model_bundle import Runner, input_spec
from rbn.experiments.train import seed_everything
from rbn.library.convert import convert_bn_to_rbn
from rbn.library.export import export_onnx
from rbn.library.intake import Intake, load_model


@dataclass(frozen=True)
class FolderRecipe:
    model: str
    weights: str | None
    data: str
    val_data: str | None = None
    seed: int = 0
    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.01
    calibration_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    val_fraction: float = 0.2


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return right / max(1, len(x))


def _check_classes(intake: Intake, classes: list[str]) -> None:
    if intake.num_classes != len(classes):
        raise FinetuneError(f"{intake.spec} has {intake.num_classes} outputs, the folder {len(classes)} classes "
                            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}): give a model whose head matches")


def finetune_folder(recipe: FolderRecipe, out_dir: Path, progress: bool = True) -> dict:
    """Convert to RBN and fine-tune on the folder; returns the history (see the module docstring)."""
    out_dir = Path(out_dir)
    if (out_dir / "final.pt").exists():
        raise FinetuneError(f"{out_dir} already holds a run (final.pt); choose another --out")
    intake = load_model(recipe.model, recipe.weights)
    spec = input_spec(intake)
    train, val = imagefolder.load_split(recipe.data, spec, recipe.val_fraction, recipe.seed, recipe.val_data)
    _check_classes(intake, train.classes)
    model = intake.model
    converted = convert_bn_to_rbn(model)
    seed_everything(recipe.seed)
    x_train, y_train = torch.from_numpy(train.normalized(spec)), torch.from_numpy(train.labels)
    x_val, y_val = torch.from_numpy(val.normalized(spec)), torch.from_numpy(val.labels)
    groups, peaks = optimizer_groups(model, recipe)
    optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    steps = max(1, math.ceil(len(x_train) / recipe.batch_size))
    total = steps * recipe.epochs
    generator = torch.Generator().manual_seed(recipe.seed)
    history = [{"epoch": 0, "val_accuracy": _accuracy(model, x_val, y_val), "converted_layers": len(converted)}]
    if progress:
        print(json.dumps(history[-1]), flush=True)
    step = 0
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        losses = []
        for i in range(0, len(order), recipe.batch_size):
            index = order[i:i + recipe.batch_size]
            if len(index) < 2:  # batch statistics need two samples
                continue
            xb, yb = x_train[index], y_train[index]
            flip = torch.rand(len(index), generator=generator) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            for group, peak in zip(optimizer.param_groups, peaks):
                group["lr"] = 0.5 * peak * (1 + math.cos(math.pi * step / total))
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
            step += 1
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
                        "val_accuracy": _accuracy(model, x_val, y_val)})
        if progress:
            print(json.dumps(history[-1]), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "recipe": asdict(recipe), "history": history,
                "classes": train.classes}, out_dir / "final.pt")
    (out_dir / "labels.txt").write_text("\n".join(train.classes) + "\n")
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    return {"history": history, "classes": train.classes, "train_samples": len(train), "val_samples": len(val)}


def evaluate_folder(intake: Intake, data: str | Path, val_data: str | Path | None = None, split: bool = False,
                    seed: int = 0) -> dict:
    """Accuracy of the exported graph on the folder (its validation part when ``split`` or it has one)."""
    spec = input_spec(intake)
    if val_data is not None or split or imagefolder.split_folders(data) is not None:
        images = imagefolder.load_split(data, spec, seed=seed, val_root=val_data)[1]
    else:
        images = imagefolder.load(data, spec)
    _check_classes(intake, images.classes)
    logits = Runner(export_onnx(intake.model, input_shape=intake.input_shape)).run(images.normalized(spec))[LOGITS_NAME]
    predicted = logits.argmax(1)
    result = {"model": intake.spec, "weights": intake.weights, "data": str(data), "samples": len(images),
              "accuracy": float((predicted == images.labels).mean()),
              "per_class": {c: float((predicted[images.labels == i] == i).mean()) for i, c in enumerate(images.classes)
                            if (images.labels == i).any()}}
    if logits.shape[1] > 5:
        top5 = np.argsort(-logits, axis=1)[:, :5]
        result["top5_accuracy"] = float((top5 == images.labels[:, None]).any(axis=1).mean())
    return result
