"""Networks with non-trivial norm statistics and calibration weights, so no branch is a no-op."""

import torch

from rbn.library.resnet import resnet20


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)

    def fill(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                if m.affine:  # affine=False norms have no gamma and beta
                    fill(m.weight, 0.5, 1.5)
                    fill(m.bias, -0.5, 0.5)
                fill(m.running_mean, -0.5, 0.5)
                fill(m.running_var, 0.5, 2.0)
                if hasattr(m, "center_weight"):
                    fill(m.center_weight, -0.5, 0.5)
                    fill(m.scale_weight, -1, 1)
                    fill(m.scale_bias, -1, 1)
    return model.eval()


def random_resnet20(norm: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_norms(resnet20(norm), seed)
