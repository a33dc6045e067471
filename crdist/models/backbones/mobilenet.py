"""MobileNetV2 (torchvision), a small ImageNet backbone (2.2 M parameters without the classifier).

The feature is the 1280-d global average of the last feature map, the vector torchvision's own
model hands its classifier. torchvision's ImageNet file (``mobilenet_v2-b0353104.pth``, which
``crdist weights mobilenet-v2`` finds when installed) loads through ``model.init``.

MobileNetV2 downsamples 32×: on images under 32 px its last stages see a single pixel made mostly
of padding, so the builder refuses them and says to resize the stream (``data.image_size``).
"""

from __future__ import annotations

from torch import nn

from crdist.config import ConfigError
from crdist.models.backbones import backbone, without_prefix

MIN_IMAGE_SIZE = 32  # the network's total stride


def _inverted_residuals(net: nn.Module) -> list[nn.Module]:
    from torchvision.models.mobilenetv2 import InvertedResidual

    return [m for m in net.features if isinstance(m, InvertedResidual)]


@backbone("mobilenet-v2", pretrained_keys=without_prefix("classifier."), blocks=_inverted_residuals)
def mobilenet_v2(in_channels: int, model_cfg=None, image_size: int | None = None) -> tuple[nn.Module, int]:
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"model.backbone: mobilenet-v2 downsamples its input {MIN_IMAGE_SIZE}×, so this stream's "
                          f"{image_size} px images would leave its last layers a single pixel of mostly padding; "
                          f"set data.image_size to {MIN_IMAGE_SIZE} or more (e.g. 64) to resize them")
    import torchvision  # here, not at import (see crdist/models/backbones/__init__.py)

    net = torchvision.models.mobilenet_v2(weights=None)
    if in_channels != 3:
        first = net.features[0][0]
        net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=first.kernel_size,
                                       stride=first.stride, padding=first.padding, bias=False)
        # torchvision's own initialisation of MobileNetV2's convolutions (MobileNetV2.__init__)
        nn.init.kaiming_normal_(net.features[0][0].weight, mode="fan_out")
    # The classifier is dropout + ImageNet's linear layer; without it forward() returns the
    # pooled features. crdist's head is built for the stream's classes.
    feature_dim = net.last_channel
    net.classifier = nn.Identity()
    return net, feature_dim
