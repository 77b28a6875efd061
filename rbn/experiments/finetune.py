"""From a trained BN checkpoint to an RBN candidate: convert, then fine-tune briefly. Resumable.

The conversion (rbn.library.convert) is function-preserving, so the epoch-0 model answers like the BN
model; fine-tuning then lets the calibration weights (w_m, w_v, w_b) move away from their
neutral start. The data pipeline, augmentation and optimizer are rbn.experiments.train's; the schedule is
short with a small peak learning rate (cosine to 0), and the calibration weights may get their
own peak learning rate.

Out folder: ``last.pt`` (resumable state, after every epoch), ``epoch-K.pt`` for each kept epoch
K (0 = converted, not yet fine-tuned), ``final.pt`` and ``history.json``. Every checkpoint except
last.pt has rbn.experiments.train's final format (``recipe`` with norm 'rbn', ``model``, ``history``), so
`rbn export`, `rbn evaluate` and `rbn bundle` take it; the recipe carries the provenance
(source checkpoint path and sha256, ``finetuned_epochs``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from rbn.library.convert import convert_bn_to_rbn
from rbn.library.layer import RepresentativeBatchNorm2d
from rbn.experiments.release import CheckpointError, load_checkpoint
from rbn.experiments.train import (Schedule, Tensors, load_tensors, param_groups, pick_device, resumable_state, run_epoch, save_atomic,
                       seed_everything)

# The RBN-only parameters; gamma and beta are the BN model's and keep the base learning rate.
CALIBRATION_NAMES = ("center_weight", "scale_weight", "scale_bias")


@dataclass(frozen=True)
class FinetuneRecipe:
    """What a fine-tuning run does; stored in its checkpoints (a resume must match it)."""

    source: str  # the BN checkpoint, as given
    source_sha256: str
    source_seed: int | None
    arch: str = "resnet20"
    norm: str = "rbn"
    seed: int = 0  # data order and augmentation of the fine-tuning
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.01  # peak; a tenth of rbn.experiments.train's: the weights are already trained
    calibration_lr: float | None = None  # peak for w_m, w_v, w_b; None: the same as lr
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    crop_padding: int = 2
    train_samples: int | None = None  # first N training images only (smoke tests); None: all
    test_samples: int | None = None  # first N test images for the per-epoch accuracy; None: all


class FinetuneError(ValueError):
    """The run cannot start or resume as asked; the message says why."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recipe_for(source: str | Path, **options) -> FinetuneRecipe:
    """A recipe for ``source`` (checked to be a BN checkpoint), with ``options`` overriding defaults."""
    _, source_recipe = load_checkpoint(source)
    if source_recipe["norm"] != "bn":
        raise CheckpointError(f"{source}: a {source_recipe['norm']!r} checkpoint; fine-tuning starts from a 'bn' one")
    return FinetuneRecipe(
        source=str(source), source_sha256=sha256_of(source), source_seed=source_recipe.get("seed"), arch=source_recipe["arch"], **options
    )


def converted_model(source: str | Path) -> nn.Module:
    """The BN checkpoint's model with every BatchNorm2d replaced by an equivalent RBN (eval mode)."""
    model, _ = load_checkpoint(source)
    if not convert_bn_to_rbn(model):
        raise CheckpointError(f"{source}: no BatchNorm2d layer to convert")
    return model.eval()


def optimizer_groups(model: nn.Module, recipe: FinetuneRecipe) -> tuple[list[dict], tuple[float, ...]]:
    """rbn.experiments.train's groups (decay on conv/linear weights only) with the calibration weights split off.

    Returns the groups and each group's peak learning rate.
    """
    calibration = {
        id(p)
        for m in model.modules()
        if isinstance(m, RepresentativeBatchNorm2d)
        for n, p in m.named_parameters(recurse=False)
        if n in CALIBRATION_NAMES
    }
    decay, no_decay = param_groups(model, recipe.weight_decay)
    rest = [p for p in no_decay["params"] if id(p) not in calibration]
    calib = [p for p in no_decay["params"] if id(p) in calibration]
    groups = [decay, {"params": rest, "weight_decay": 0.0}, {"params": calib, "weight_decay": 0.0}]
    calibration_lr = recipe.lr if recipe.calibration_lr is None else recipe.calibration_lr
    return groups, (recipe.lr, recipe.lr, calibration_lr)


def _subset(data: Tensors, recipe: FinetuneRecipe) -> Tensors:
    n_train, n_test = recipe.train_samples, recipe.test_samples
    return Tensors(data.x_train[:n_train], data.y_train[:n_train], data.x_test[:n_test], data.y_test[:n_test])


def _release(recipe: FinetuneRecipe, model: nn.Module, history: list[dict]) -> dict:
    """rbn.experiments.train's final checkpoint format, with the provenance in the recipe."""
    recipe_doc = asdict(recipe) | {"finetuned_epochs": len(history)}
    return {"recipe": recipe_doc, "model": {k: v.cpu() for k, v in model.state_dict().items()}, "history": list(history)}


def _same_run(saved: dict, recipe: FinetuneRecipe) -> bool:
    # The source may be named by another path on resume; its sha256 is what identifies it.
    return {**saved, "source": None} == {**asdict(recipe), "source": None}


def finetune(
    recipe: FinetuneRecipe,
    out_dir: Path,
    *,
    resume: bool = False,
    keep: Iterable[int] = (0,),
    stop_after: int | None = None,
    data_path: str | None = None,
    device: str = "auto",
    progress: bool = True,
    tensors: Tensors | None = None,
) -> dict:
    """Convert ``recipe.source`` and fine-tune it into ``out_dir``; returns the final checkpoint.

    ``keep``: epochs after which a standalone ``epoch-K.pt`` is written (0: the converted model).
    ``stop_after``: return after this epoch (a later call with ``resume=True`` goes on).
    Without ``resume`` an existing run in ``out_dir`` is an error, never silently overwritten.
    ``tensors``: the data set already loaded on the device (rbn.experiments.train.load_tensors), to share it
    between runs; by default it is loaded from ``data_path``.
    """
    keep = set(keep)
    checkpoint_path = out_dir / "last.pt"
    if not resume and (checkpoint_path.exists() or (out_dir / "final.pt").exists()):
        raise FinetuneError(f"{out_dir} already holds a run: pass --resume to continue it, or choose another --out")
    if sha256_of(recipe.source) != recipe.source_sha256:
        raise FinetuneError(f"{recipe.source}: sha256 differs from the recipe's source_sha256")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "final.pt").exists():
        final = torch.load(out_dir / "final.pt", map_location="cpu", weights_only=False)
        if not _same_run({k: v for k, v in final["recipe"].items() if k != "finetuned_epochs"}, recipe):
            raise FinetuneError(f"{out_dir / 'final.pt'} was fine-tuned with another recipe: {final['recipe']}")
        return final

    dev = pick_device(device)
    state = torch.load(checkpoint_path, map_location=dev, weights_only=False) if checkpoint_path.exists() else None
    if state is not None and not _same_run(state["recipe"], recipe):
        raise FinetuneError(f"{checkpoint_path} was fine-tuned with another recipe: {state['recipe']}")
    data = _subset(tensors or load_tensors(dev, data_path), recipe)
    seed_everything(recipe.seed)
    # channels_last: as rbn.experiments.train, faster oneDNN convolutions on the CPU.
    model = converted_model(recipe.source).to(dev, memory_format=torch.channels_last)
    groups, peaks = optimizer_groups(model, recipe)
    optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    steps_per_epoch = len(data.x_train) // recipe.batch_size
    if steps_per_epoch == 0:
        raise FinetuneError(f"{len(data.x_train)} training images make no batch of {recipe.batch_size}")
    schedule = Schedule(steps_per_epoch, recipe.epochs, int(recipe.warmup_epochs * steps_per_epoch), peaks)
    generator = torch.Generator().manual_seed(recipe.seed)
    start_epoch, history = 0, []

    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, history = state["epoch"], state["history"]
    elif 0 in keep:
        save_atomic(_release(recipe, model, history), out_dir / "epoch-0.pt")

    last_epoch = recipe.epochs if stop_after is None else min(stop_after, recipe.epochs)
    for epoch in range(start_epoch, last_epoch):
        desc = f"finetune seed {recipe.seed} epoch {epoch + 1}/{recipe.epochs}"
        run_epoch(model, optimizer, schedule, data, epoch, recipe, generator, desc, progress, history)
        if epoch + 1 in keep:
            save_atomic(_release(recipe, model, history), out_dir / f"epoch-{epoch + 1}.pt")
        save_atomic(resumable_state(recipe, model, optimizer, generator, epoch + 1, history), checkpoint_path)

    final = _release(recipe, model, history)
    if len(history) == recipe.epochs:
        save_atomic(final, out_dir / "final.pt")
        (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    return final

