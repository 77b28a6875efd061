"""`rbn finetune`: the converted model answers like the BN one (torch and ONNX); a tiny run resumes exactly."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rbn.experiments import data as fmnist
from rbn.cli import _load_for_eval, main
from rbn.library.export import export_onnx
from rbn.experiments.finetune import FinetuneError, converted_model, finetune, optimizer_groups, recipe_for, sha256_of
from rbn.library.layer import RepresentativeBatchNorm2d
from rbn.experiments.release import INPUT_SHAPE, load_checkpoint
from rbn.experiments.train import Schedule, load_tensors

ROOT = Path(__file__).resolve().parents[3]
BN_CHECKPOINT = ROOT / "checkpoints" / "resnet20-bn-s0.pt"


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """The first 256 Fashion-MNIST test images, normalised as the models take them."""
    return fmnist.normalize(fmnist.load_split("test").images[:256])


def onnx_run(data: bytes, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return tuple(session.run(["logits", "rbn_stats"], {"input": x}))


def test_converted_model_answers_like_the_bn_model_in_torch_and_through_onnx(images):
    bn, _ = load_checkpoint(BN_CHECKPOINT)
    rbn = converted_model(BN_CHECKPOINT)
    assert sum(isinstance(m, RepresentativeBatchNorm2d) for m in rbn.modules()) == 21
    x = torch.from_numpy(images)
    with torch.no_grad():
        want, got = bn(x), rbn(x)
    # Same predictions; logits equal up to float rounding (gamma / sigmoid(1) * sigmoid(1)).
    assert torch.equal(want.argmax(1), got.argmax(1))
    assert (want - got).abs().max().item() <= 1e-5 * want.abs().max().item()

    bn_logits, bn_stats = onnx_run(export_onnx(bn, input_shape=INPUT_SHAPE), images)
    rbn_logits, rbn_stats = onnx_run(export_onnx(rbn, input_shape=INPUT_SHAPE), images)
    assert np.array_equal(bn_logits.argmax(1), rbn_logits.argmax(1))
    assert np.abs(bn_logits - rbn_logits).max() <= 1e-4
    # rbn_stats is K(X_hat) for both norms, and X_hat is unchanged by the conversion.
    assert np.abs(bn_stats - rbn_stats).max() <= 1e-4 and bn_stats.min() > 0
    assert np.abs(rbn_logits - got.numpy()).max() <= 1e-4  # and ONNX says what torch says


def test_calibration_weights_get_their_own_learning_rate():
    recipe = recipe_for(BN_CHECKPOINT, lr=0.01, calibration_lr=0.1)
    groups, peaks = optimizer_groups(converted_model(BN_CHECKPOINT), recipe)
    assert peaks == (0.01, 0.01, 0.1)
    assert [len(g["params"]) for g in groups] == [21 + 1, 21 * 2 + 1, 21 * 3]  # convs + fc weight; gamma, beta + fc bias; w_m, w_v, w_b
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0, 0.0]
    assert optimizer_groups(converted_model(BN_CHECKPOINT), recipe_for(BN_CHECKPOINT, lr=0.02))[1] == (0.02, 0.02, 0.02)
    # rbn.experiments.train's schedule gives each group its own peak: cosine from the peak, half-way at mid-run.
    optimizer = torch.optim.SGD(groups, lr=0.01)
    schedule = Schedule(steps_per_epoch=10, epochs=2, warmup_steps=0, peaks=peaks)
    schedule.apply(optimizer, 0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.01, 0.1]
    schedule.apply(optimizer, 10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.005, 0.005, 0.05])


def test_tiny_finetune_writes_checkpoints_the_release_path_takes_and_resumes_exactly(tmp_path, images):
    tensors = load_tensors(torch.device("cpu"))
    recipe = recipe_for(BN_CHECKPOINT, seed=1, epochs=2, batch_size=16, train_samples=32, test_samples=32, calibration_lr=0.05)
    straight = finetune(recipe, tmp_path / "straight", keep=(0, 1), progress=False, tensors=tensors)

    # Interrupted after epoch 1, then resumed: the same weights to the bit.
    finetune(recipe, tmp_path / "resumed", stop_after=1, progress=False, tensors=tensors)
    assert not (tmp_path / "resumed" / "final.pt").exists()
    with pytest.raises(FinetuneError, match="--resume"):
        finetune(recipe, tmp_path / "resumed", progress=False, tensors=tensors)
    other = recipe_for(BN_CHECKPOINT, seed=2, epochs=2, batch_size=16, train_samples=32, test_samples=32)
    with pytest.raises(FinetuneError, match="another recipe"):
        finetune(other, tmp_path / "resumed", resume=True, progress=False, tensors=tensors)
    resumed = finetune(recipe, tmp_path / "resumed", resume=True, progress=False, tensors=tensors)
    assert straight["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    assert [h["test_accuracy"] for h in straight["history"]] == [h["test_accuracy"] for h in resumed["history"]]

    model, recipe_doc = load_checkpoint(tmp_path / "straight" / "final.pt")
    assert recipe_doc["norm"] == "rbn" and recipe_doc["finetuned_epochs"] == 2 and len(recipe_doc["history"]) == 2
    assert recipe_doc["source"] == str(BN_CHECKPOINT) and recipe_doc["source_sha256"] == sha256_of(BN_CHECKPOINT)
    assert recipe_doc["source_seed"] == 0 and recipe_doc["seed"] == 1 and recipe_doc["calibration_lr"] == 0.05
    layers = [m for m in model.modules() if isinstance(m, RepresentativeBatchNorm2d)]
    assert all(m.center_weight.abs().max() > 0 and m.scale_weight.abs().max() > 0 for m in layers)  # the calibration trained

    # epoch-0.pt is the converted model, untouched; epoch-1.pt is the one after the first epoch.
    epoch0, doc0 = load_checkpoint(tmp_path / "straight" / "epoch-0.pt")
    assert doc0["finetuned_epochs"] == 0 and doc0["history"] == []
    x = torch.from_numpy(images[:32])
    with torch.no_grad():
        assert torch.equal(epoch0(x), converted_model(BN_CHECKPOINT)(x))
    _, doc1 = load_checkpoint(tmp_path / "straight" / "epoch-1.pt")
    assert doc1["finetuned_epochs"] == 1 and doc1["history"] == straight["history"][:1]
    assert sorted(p.name for p in (tmp_path / "straight").iterdir()) == ["epoch-0.pt", "epoch-1.pt", "final.pt", "history.json", "last.pt"]

    # `rbn evaluate` names a fine-tuned checkpoint as such and carries its provenance.
    name, onnx_bytes, info = _load_for_eval(tmp_path / "straight" / "epoch-1.pt")
    assert name == "resnet20-rbn-ft-s1-e1" and info["norm"] == "rbn" and info["seed"] == 1
    assert info["finetune"] == {
        "source": str(BN_CHECKPOINT), "source_sha256": sha256_of(BN_CHECKPOINT), "source_seed": 0,
        "epochs": 2, "finetuned_epochs": 1, "lr": 0.01, "calibration_lr": 0.05,
    }  # fmt: skip
    logits, _ = onnx_run(onnx_bytes, images[:32])
    with torch.no_grad():
        assert np.abs(logits - load_checkpoint(tmp_path / "straight" / "epoch-1.pt")[0](x).numpy()).max() <= 1e-4


def test_cli_refuses_a_checkpoint_that_is_not_bn(tmp_path, capsys):
    assert main(["finetune", str(ROOT / "checkpoints" / "resnet20-rbn-s0.pt"), "--out", str(tmp_path / "run")]) == 2
    assert "fine-tuning starts from a 'bn' one" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
