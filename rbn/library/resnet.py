"""ResNets parameterised by the norm layer, torchvision-style (``norm_layer(num_features)``).

- ``cifar_resnet``: the CIFAR ResNet of He et al. (6n+2 layers, widths 16-32-64 scaled by
  ``width``), for small grayscale or RGB images; ``resnet20`` is its n=3 instance.
- ``resnet50``: the ImageNet bottleneck ResNet-50, for GPU throughput benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from rbn.library.layer import RepresentativeBatchNorm2d
from rbn.library.norms import NormFactory, get_norm_layer


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def downsample(in_planes: int, out_planes: int, stride: int, norm_layer: NormFactory) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), norm_layer(out_planes))


class _Residual(nn.Module):
    """A residual block: ``relu(branch(x) + shortcut(x))``; subclasses define ``branch``, ``relu``,
    ``downsample`` and ``residual_norm`` (the norm that closes the branch)."""

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.branch(x) + identity)


class BasicBlock(_Residual):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: NormFactory) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample(in_planes, planes, stride, norm_layer)

    @property
    def residual_norm(self) -> nn.Module:
        return self.bn2

    def branch(self, x):
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_Residual):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: NormFactory) -> None:
        super().__init__()
        width = planes
        self.conv1 = conv1x1(in_planes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride)  # stride on the 3x3, as torchvision's v1.5
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample(in_planes, planes * self.expansion, stride, norm_layer)

    @property
    def residual_norm(self) -> nn.Module:
        return self.bn3

    def branch(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """Stem -> stages of blocks -> global average pool -> linear classifier."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        stage_blocks: list[int],
        stage_widths: list[int],
        stem: Callable[[NormFactory], nn.Module],
        stem_width: int,
        num_classes: int,
        norm_layer: NormFactory,
    ) -> None:
        super().__init__()
        self.stem = stem(norm_layer)
        in_planes = stem_width
        stages = []
        for i, (blocks, width) in enumerate(zip(stage_blocks, stage_widths)):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                layers.append(block(in_planes, width, stride if b == 0 else 1, norm_layer))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, RepresentativeBatchNorm2d):
                m.reset_calibration()  # the paper's init; BN-only init code would miss w_m/w_v/w_b
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last norm's gamma in each block: every residual branch starts as identity.
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)) and m.residual_norm.affine:
                nn.init.zeros_(m.residual_norm.weight)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


def _resolve(norm: str | NormFactory) -> NormFactory:
    return get_norm_layer(norm) if isinstance(norm, str) else norm


def cifar_resnet(
    depth: int = 20,
    norm: str | NormFactory = "rbn",
    in_channels: int = 1,
    num_classes: int = 10,
    width: int = 16,
) -> ResNet:
    """CIFAR-style ResNet with depth = 6n + 2 (20, 32, 44, 56, 110)."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (e.g. 20, 32, 56), got {depth}")
    n = (depth - 2) // 6
    norm_layer = _resolve(norm)

    def stem(nl: NormFactory) -> nn.Module:
        return nn.Sequential(conv3x3(in_channels, width), nl(width), nn.ReLU(inplace=True))

    return ResNet(BasicBlock, [n] * 3, [width, 2 * width, 4 * width], stem, width, num_classes, norm_layer)


def resnet20(norm: str | NormFactory = "rbn", in_channels: int = 1, num_classes: int = 10) -> ResNet:
    return cifar_resnet(20, norm, in_channels, num_classes)


def resnet50(norm: str | NormFactory = "rbn", in_channels: int = 3, num_classes: int = 1000) -> ResNet:
    """ImageNet ResNet-50 (bottleneck, 3-4-6-3)."""
    norm_layer = _resolve(norm)

    def stem(nl: NormFactory) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            nl(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )

    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], stem, 64, num_classes, norm_layer)


ARCHITECTURES: dict[str, Callable[..., ResNet]] = {"resnet20": resnet20, "resnet50": resnet50}


def build(arch: str, norm: str, in_channels: int, num_classes: int) -> ResNet:
    try:
        builder = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; valid names: {', '.join(sorted(ARCHITECTURES))}") from None
    return builder(norm=norm, in_channels=in_channels, num_classes=num_classes)
