import torch

from rbn.library.convert import convert_bn_to_rbn
from rbn.library.layer import RepresentativeBatchNorm2d
from tests.rbn.random_weights import random_resnet20


def trained_looking_bn_resnet():
    return random_resnet20("bn")


def test_conversion_keeps_eval_outputs_and_reports_every_layer():
    model = trained_looking_bn_resnet()
    x = torch.randn(8, 1, 28, 28)
    before = model(x)
    bn_names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    converted = convert_bn_to_rbn(model)
    assert sorted(converted) == sorted(bn_names) and len(converted) == 21
    assert all(isinstance(m, RepresentativeBatchNorm2d) for n, m in model.named_modules() if n in converted)
    assert (model(x) - before).abs().max().item() <= 1e-5


def test_conversion_is_idempotent_and_model_trains_afterwards():
    model = trained_looking_bn_resnet()
    convert_bn_to_rbn(model)
    assert convert_bn_to_rbn(model) == []
    model.train()
    loss = model(torch.randn(4, 1, 28, 28)).square().mean()
    loss.backward()
    layer = next(m for m in model.modules() if isinstance(m, RepresentativeBatchNorm2d))
    assert layer.center_weight.grad is not None and layer.scale_weight.grad is not None
