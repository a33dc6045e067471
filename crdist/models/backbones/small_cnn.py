"""A three-layer convolutional network sized for CPU demos (about 93 k parameters).

``small-cnn`` normalises with BatchNorm, whose statistics come from each worker's own batch, so
its result depends on how the global batch is split across workers. ``small-cnn-gn`` is the same
network with GroupNorm (per sample, no running statistics): with ``train.data_order: global`` its
training gives the same weights on 1 worker or N (to floating-point noise).
"""

from __future__ import annotations

from torch import nn

from crdist.models.backbones import backbone


def _block(c_in: int, c_out: int, norm) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU(inplace=True)]


def _small_cnn(in_channels: int, norm) -> tuple[nn.Module, int]:
    layers = [*_block(in_channels, 32, norm), *_block(32, 64, norm), nn.MaxPool2d(2), *_block(64, 128, norm)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 128


@backbone("small-cnn")
def small_cnn(in_channels: int, model_cfg=None, image_size: int | None = None) -> tuple[nn.Module, int]:
    return _small_cnn(in_channels, nn.BatchNorm2d)


@backbone("small-cnn-gn")
def small_cnn_gn(in_channels: int, model_cfg=None, image_size: int | None = None) -> tuple[nn.Module, int]:
    return _small_cnn(in_channels, lambda channels: nn.GroupNorm(8, channels))
