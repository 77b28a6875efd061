"""``export_onnx`` and its helpers on a tiny two-layer network (an export takes a fraction of a second), against
references computed by hand from the layers' own weights: the graph's names, opset and dynamic batch axis; the
three outputs (logits, per-layer RMS of K(X_hat), every channel's K(X_hat)) at batch sizes the trace never saw;
folded and unfolded; the bytes written where asked; a norm without running statistics refused by name; the
fold's safety check at its tolerance; the caller's model left as it was; the layer names and widths."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from rbn.library.export import (OPSET, ExportError, WithStats, _verify_fold, export_onnx, inference_model, stats_channels,
                                stats_layers)
from rbn.library.layer import RepresentativeBatchNorm2d

SHAPE = (1, 6, 6)
OUTPUTS = ["logits", "rbn_stats", "rbn_channel_stats"]


class Tiny(nn.Module):
    """conv -> norm -> relu, twice, then a global mean and a linear head."""

    def __init__(self, norm: type[nn.BatchNorm2d] = nn.BatchNorm2d, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1, self.norm1 = nn.Conv2d(1, 4, 3, padding=1, bias=False), norm(4)
        self.conv2, self.norm2 = nn.Conv2d(4, 6, 3, padding=1, bias=False), norm(6)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():
            for n in (self.norm1, self.norm2):
                c = n.num_features
                n.running_mean.copy_(torch.linspace(-0.5, 0.5, c))
                n.running_var.copy_(torch.linspace(0.5, 2.0, c))
                n.weight.copy_(torch.linspace(0.5, 1.5, c))
                n.bias.copy_(torch.linspace(-0.2, 0.2, c))
                if isinstance(n, RepresentativeBatchNorm2d):
                    n.center_weight.copy_(torch.linspace(-0.3, 0.3, c))
                    n.scale_weight.copy_(torch.linspace(0.1, -0.1, c))

    def forward(self, x):
        x = torch.relu(self.norm1(self.conv1(x)))
        x = torch.relu(self.norm2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def k_hat(conv_out: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    """K(X_hat) by its definition: the instance's channel means, RBN-centred, in running standard deviations."""
    means = conv_out.mean(dim=(2, 3))
    w_m = norm.center_weight if isinstance(norm, RepresentativeBatchNorm2d) else torch.zeros(norm.num_features)
    return (means * (1 + w_m) - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)


def by_hand(model: Tiny, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with torch.no_grad():
        model = model.eval()
        pre1 = model.conv1(x)
        pre2 = model.conv2(torch.relu(model.norm1(pre1)))
        k1, k2 = k_hat(pre1, model.norm1), k_hat(pre2, model.norm2)
        rms = torch.stack([k1.pow(2).mean(dim=1).sqrt(), k2.pow(2).mean(dim=1).sqrt()], dim=1)
        return model(x).numpy(), rms.numpy(), torch.cat([k1, k2], dim=1).numpy()


def run(data: bytes, x: torch.Tensor) -> list[np.ndarray]:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(OUTPUTS, {"input": x.numpy()})


@pytest.fixture(scope="module", params=[nn.BatchNorm2d, RepresentativeBatchNorm2d], ids=["bn", "rbn"])
def tiny(request) -> Tiny:
    return Tiny(request.param)


@pytest.mark.parametrize("folded", [True, False])
def test_the_outputs_are_the_hand_computed_ones_at_any_batch_size(tiny, folded):
    data = export_onnx(tiny, input_shape=SHAPE, folded=folded)
    for batch in (1, 3):
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(batch))
        logits, rms, channels = run(data, x)
        want = by_hand(tiny, x)
        assert logits.shape == (batch, 3) and rms.shape == (batch, 2) and channels.shape == (batch, 10)
        for got, ref in zip((logits, rms, channels), want, strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_the_graph_names_opset_and_dynamic_batch_axis(tiny):
    graph = onnx.load_from_string(export_onnx(tiny, input_shape=SHAPE))
    assert OPSET == 18 and [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert [i.name for i in graph.graph.input] == ["input"]
    assert [o.name for o in graph.graph.output] == OUTPUTS
    for value in [*graph.graph.input, *graph.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == list(SHAPE)


def test_an_older_opset_on_request():
    graph = onnx.load_from_string(export_onnx(Tiny(), input_shape=SHAPE, opset=17))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_folded_graphs_keep_no_norm_and_unfolded_ones_keep_both():
    def ops(data: bytes) -> list[str]:
        return [n.op_type for n in onnx.load_from_string(data).graph.node]

    model = Tiny()
    folded, unfolded = ops(export_onnx(model, input_shape=SHAPE)), ops(export_onnx(model, input_shape=SHAPE, folded=False))
    assert folded.count("BatchNormalization") == 0 and folded.count("Conv") == 2
    assert unfolded.count("BatchNormalization") == 2 and unfolded.count("Conv") == 2


def test_the_graph_is_constant_folded():
    """The running statistics' 1/sqrt(var + eps) of the stats outputs is one constant, not Add/Sqrt nodes."""
    graph = onnx.load_from_string(export_onnx(Tiny(), input_shape=SHAPE, folded=False)).graph
    assert not any(n.op_type in ("Sqrt", "Reciprocal") for n in graph.node)


def test_the_bytes_are_written_where_asked_and_only_then(tmp_path):
    path = tmp_path / "new" / "folder" / "tiny.onnx"
    data = export_onnx(Tiny(), path, input_shape=SHAPE)
    assert path.read_bytes() == data
    again = export_onnx(Tiny(), str(tmp_path / "as-text.onnx"), input_shape=SHAPE)
    assert again == data and (tmp_path / "as-text.onnx").read_bytes() == data
    before = sorted(p.name for p in tmp_path.iterdir())
    assert export_onnx(Tiny(), input_shape=SHAPE) == data
    assert sorted(p.name for p in tmp_path.iterdir()) == before


class Strided(Tiny):
    """Adds a strided slice of a constant: the exporter notes that it cannot constant-fold it (as for
    EfficientNet's padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.linspace(-1, 1, 12))

    def forward(self, x):
        return super().forward(x) + self.offsets[::4]


def test_the_export_is_quiet():
    """The exporter's deprecation notice, the tracer's notes and its constant-folding notes are not passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = export_onnx(Strided(), input_shape=SHAPE)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = Strided().eval()(x).numpy()
    np.testing.assert_allclose(run(data, x)[0], want, rtol=1e-4, atol=1e-5)


def test_a_norm_without_running_statistics_is_refused_by_name():
    model = Tiny()
    model.norm2 = nn.BatchNorm2d(6, track_running_stats=False)
    with pytest.raises(ExportError) as refused:
        export_onnx(model, input_shape=SHAPE)
    assert str(refused.value) == (
        "norm2: a norm layer without running statistics normalises with batch statistics, so samples in a batch would "
        "change each other's outputs; retrain with track_running_stats=True")


def test_the_callers_model_keeps_its_mode_and_weights():
    model = Tiny().train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, input_shape=SHAPE)
    wrapper = inference_model(model, folded=True, example=torch.zeros(2, *SHAPE))
    assert model.training and all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert isinstance(wrapper, WithStats) and not wrapper.training and not wrapper.model.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in wrapper.model.modules())  # folded away
    plain = inference_model(model, folded=False)
    assert not plain.training and not plain.model.training and plain.model is not model
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.model.modules()) == 2
    by_default = inference_model(model, example=torch.zeros(2, *SHAPE))  # folded unless told otherwise
    assert not any(isinstance(m, nn.BatchNorm2d) for m in by_default.model.modules())
    assert all(m.training for m in model.modules())  # every submodule of the caller's model too


def test_inference_model_outputs_are_the_three_by_hand(tiny):
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(7))
    for folded in (True, False):
        with torch.no_grad():
            got = [t.numpy() for t in inference_model(tiny, folded=folded, example=x)(x)]
        for g, ref in zip(got, by_hand(tiny, x), strict=True):
            np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)


def test_the_fold_check_refuses_a_graph_that_differs_beyond_its_tolerance():
    model = Tiny()
    with torch.no_grad():
        model.head.bias[0] += 10.0  # logits near 10: the tolerance is 1e-3 * (1 + 10), not 1e-3
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = inference_model(model, folded=False)(x)[0]
    tolerance = 1e-3 * (1 + logits.abs().max().item())
    assert tolerance > 0.01

    def shifted(by: float) -> WithStats:
        wrapper = inference_model(model, folded=False)
        with torch.no_grad():
            wrapper.model.head.bias += by  # every logit moves by exactly this; the statistics do not
        return wrapper

    _verify_fold(model, inference_model(model, folded=True, example=x), x)  # the real fold passes
    _verify_fold(model, shifted(0.95 * tolerance), x)  # within the tolerance
    with pytest.raises(ExportError) as refused:
        _verify_fold(model, shifted(1.05 * tolerance), x)
    assert str(refused.value) == (
        "the folded graph's logits differ from the model's: some conv output probably also feeds something other than "
        "its norm layer; export with folded=False")
    wrapper = inference_model(model, folded=False)
    with torch.no_grad():
        wrapper.model.norm2.running_mean += 1.0  # logits and both statistics move
    with pytest.raises(ExportError, match="the folded graph's logits differ"):
        _verify_fold(model, wrapper, x)


def test_the_fold_check_reads_the_statistics_too():
    model = Tiny()
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(4))

    class SameLogitsOtherStats(nn.Module):
        def __init__(self, wrapper: WithStats, which: int) -> None:
            super().__init__()
            self.wrapper, self.which = wrapper, which

        def forward(self, x):
            out = list(self.wrapper(x))
            out[self.which] = out[self.which] + 1.0
            return tuple(out)

    for which, name in ((1, "rbn_stats"), (2, "rbn_channel_stats")):
        with pytest.raises(ExportError, match=f"the folded graph's {name} differ"):
            _verify_fold(model, SameLogitsOtherStats(inference_model(model, folded=False), which), x)


class ReusedConv(nn.Module):
    """conv -> norm in a Sequential (a structural fold candidate), but the conv's output also feeds the sum:
    folding the pair changes the function."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        with torch.no_grad():
            self.body[1].running_mean.copy_(torch.linspace(-1, 1, 4))
            self.body[1].running_var.copy_(torch.linspace(0.5, 2.0, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.body[0](x)
        return self.head((self.body[1](y) + y).mean(dim=(2, 3)))


def test_the_fold_check_compares_with_the_model_as_written():
    model = ReusedConv().eval()
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(6))
    wrong = inference_model(model, folded=True)  # no example: pairs from the structure, this one wrongly
    with pytest.raises(ExportError, match="the folded graph's logits differ"):
        _verify_fold(model, wrong, x)
    _verify_fold(model, inference_model(model, folded=True, example=x), x)  # traced: the pair is left alone


class TracedNote(Tiny):
    def forward(self, x):
        if torch.jit.is_tracing():
            warnings.warn("a note of the model's own, while traced", UserWarning)
            warnings.warn("Constant folding is what this model's own check calls it", RuntimeWarning)
        return super().forward(x)


def test_only_the_exporters_own_warnings_are_silenced():
    """The constant-folding filter is for the exporter's UserWarning: the same words in another kind pass."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(TracedNote(), input_shape=SHAPE)
    assert {f"{w.category.__name__}: {w.message}" for w in caught} == {
        "UserWarning: a note of the model's own, while traced",
        "RuntimeWarning: Constant folding is what this model's own check calls it"}


def test_the_layer_names_and_widths_in_forward_order():
    model = Tiny().train()
    assert stats_layers(model, SHAPE) == ["norm1", "norm2"]
    assert stats_channels(model, SHAPE) == [4, 6]
    assert all(m.training for m in model.modules())  # read on a copy: no submodule of the caller's turned to eval


def test_the_layer_names_and_widths_are_read_on_the_models_device():
    """Only a CPU here: torch's "meta" device (shapes without storage) stands for another device."""
    model = Tiny().to("meta")
    assert stats_layers(model, SHAPE) == ["norm1", "norm2"]
    assert stats_channels(model, SHAPE) == [4, 6]
