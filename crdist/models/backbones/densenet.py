"""DenseNet-121 (torchvision), the backbone the paper uses for FMoW's 224×224 satellite images.

Pretrained weights come from a local file (model.init), never from a download.
"""

from __future__ import annotations

import torchvision
from torch import nn

from crdist.models.backbones import backbone


@backbone("densenet121")
def densenet121(in_channels: int, model_cfg=None) -> tuple[nn.Module, int]:
    net = torchvision.models.densenet121(weights=None)
    if in_channels != 3:
        net.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    feature_dim = net.classifier.in_features
    net.classifier = nn.Identity()
    return net, feature_dim
