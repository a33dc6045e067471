"""ResNet-18 in its CIFAR form: 3×3 stride-1 stem and no max-pool, so small images keep their resolution."""

from __future__ import annotations

import torchvision
from torch import nn

from crdist.models.backbones import backbone


@backbone("resnet18-cifar")
def resnet18_cifar(in_channels: int, model_cfg=None) -> tuple[nn.Module, int]:
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim
