"""torchvision's ResNets, each in two forms.

``resnet18`` … ``resnet152`` keep ImageNet's stem (7×7 stride-2 convolution and a max-pool, 224 px
images); ``resnet18-cifar`` … ``resnet152-cifar`` take the CIFAR stem (3×3 stride-1, no max-pool),
so 32 px images keep their resolution. A torchvision ImageNet checkpoint loads into either, except
the CIFAR stem's first convolution, whose shape differs (the error says so).
"""

from __future__ import annotations

from torch import nn

from crdist.models.backbones import backbone, without_prefix

DEPTHS = (18, 34, 50, 101, 152)


def _resnet(depth: int, in_channels: int, cifar_stem: bool) -> tuple[nn.Module, int]:
    import torchvision  # here, not at import (see crdist/models/backbones/__init__.py)

    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


def _blocks(net: nn.Module) -> list[nn.Module]:
    return [block for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for block in layer]


def _register(depth: int, cifar_stem: bool) -> None:
    name = f"resnet{depth}" + ("-cifar" if cifar_stem else "")

    @backbone(name, pretrained_keys=without_prefix("fc."), blocks=_blocks)
    def build(in_channels: int, model_cfg=None, image_size: int | None = None) -> tuple[nn.Module, int]:
        return _resnet(depth, in_channels, cifar_stem)


for _depth in DEPTHS:
    _register(_depth, cifar_stem=False)
    _register(_depth, cifar_stem=True)
