"""Backbones: a name → a builder ``(in_channels) -> (module, feature_dim)``; one module each.

A backbone maps a batch of inputs to a batch of feature vectors (N × feature_dim).
"""

from crdist.registry import Registry

BACKBONES: Registry = Registry("backbone")

from crdist.models.backbones import resnet_cifar, small_cnn  # noqa: E402,F401  (register themselves)
