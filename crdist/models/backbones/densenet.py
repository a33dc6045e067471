"""DenseNet-121 (torchvision), the backbone the paper uses for FMoW's 224×224 satellite images.

Pretrained weights come from a local file (model.init), never from a download. torchvision's own
ImageNet file predates its current module names ("denselayer1.norm.1.weight" for
"denselayer1.norm1.weight"); the key mapping renames them as torchvision's loader does.
"""

from __future__ import annotations

import re

from torch import nn

from crdist.models.backbones import backbone

_OLD_LAYER_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _torchvision_keys(state: dict, module: nn.Module) -> dict:
    renamed = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            continue  # ImageNet's classifier; crdist's head is built for the stream's classes
        old = _OLD_LAYER_KEY.match(key)
        renamed[old.group(1) + old.group(2) if old else key] = value
    return renamed


def _dense_blocks(net: nn.Module) -> list[nn.Module]:
    # Whole dense blocks, not their layers: a layer's input is the block's list of features so
    # far, which grows after the call, so recomputing a layer later would see the wrong list.
    from torchvision.models.densenet import _DenseBlock

    return [m for m in net.modules() if isinstance(m, _DenseBlock)]


@backbone("densenet121", pretrained_keys=_torchvision_keys, blocks=_dense_blocks)
def densenet121(in_channels: int, model_cfg=None, image_size: int | None = None) -> tuple[nn.Module, int]:
    import torchvision  # here, not at import (see crdist/models/backbones/__init__.py)

    net = torchvision.models.densenet121(weights=None)
    if in_channels != 3:
        net.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    feature_dim = net.classifier.in_features
    net.classifier = nn.Identity()
    return net, feature_dim
