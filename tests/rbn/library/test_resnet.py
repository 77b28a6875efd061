import pytest
import torch

from rbn.library.layer import RepresentativeBatchNorm2d
from rbn.library.resnet import cifar_resnet, resnet20, resnet50


@pytest.mark.parametrize("norm", ["bn", "rbn"])
def test_resnet20_shapes_and_norm_slot(norm):
    model = resnet20(norm, in_channels=1, num_classes=10)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 21
    assert all(isinstance(m, RepresentativeBatchNorm2d) == (norm == "rbn") for m in norms)
    assert sum(p.numel() for p in model.parameters()) < 300_000


def test_rbn_layers_initialise_themselves():
    model = cifar_resnet(32, "rbn", in_channels=3, num_classes=100, width=8)
    layers = [m for m in model.modules() if isinstance(m, RepresentativeBatchNorm2d)]
    assert all(torch.all(m.scale_bias == 1) and torch.all(m.center_weight == 0) for m in layers)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_resnet50_builds_with_either_norm():
    for norm in ("bn", "rbn"):
        model = resnet50(norm)
        assert sum(p.numel() for p in model.parameters()) > 25_000_000
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_bad_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)
