"""A three-layer convolutional network sized for CPU demos (about 93 k parameters)."""

from __future__ import annotations

from torch import nn

from crdist.models.backbones import backbone


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@backbone("small-cnn")
def small_cnn(in_channels: int, model_cfg=None) -> tuple[nn.Module, int]:
    layers = [*_block(in_channels, 32), *_block(32, 64), nn.MaxPool2d(2), *_block(64, 128)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 128
