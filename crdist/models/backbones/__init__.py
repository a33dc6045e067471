"""Backbones: a name → a builder; one module per family.

A builder is called as ``builder(in_channels, model_cfg, image_size)`` and returns
``(module, feature_dim)``: the module maps a batch of inputs (images, or a text backbone's
tokenised fields) to a batch of feature vectors (N × feature_dim). ``in_channels`` is 0 for text;
``image_size`` is the side of the (square) images it is built for, or None where it does not matter.

Each builder carries what the rest of crdist asks of it:

- ``modality``: "image" or "text", the inputs it takes;
- ``pretrained_keys``: how a torchvision ImageNet checkpoint's keys map onto the module's
  (``crdist/models/pretrained.py``), or None where no such checkpoint exists;
- ``blocks``: the module's repeated blocks, whose activations ``train.activation_checkpointing``
  recomputes in the backward pass instead of keeping them (None: the backbone has no such option).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from crdist.registry import Registry

BACKBONES: Registry = Registry("backbone")

# (a torchvision state dict, the backbone module) → the same weights under the module's own key
# names, fitted to it where torchvision itself would (a ViT's position embeddings to its image
# size). It drops the ImageNet classifier: crdist's own head is built for the stream's classes.
KeyMapping = Callable[[dict, "nn.Module"], dict]


def backbone(name: str, modality: str = "image", pretrained_keys: KeyMapping | None = None,
             blocks: Callable[[nn.Module], list[nn.Module]] | None = None):
    def add(builder):
        builder.modality = modality
        builder.pretrained_keys = pretrained_keys
        builder.blocks = blocks
        return BACKBONES.register(name)(builder)

    return add


def without_prefix(prefix: str) -> KeyMapping:
    """The mapping of a torchvision model whose classifier is the submodule ``prefix``."""
    return lambda state, module: {k: v for k, v in state.items() if not k.startswith(prefix)}


# The torchvision families import torchvision inside their builders, not at module import: it
# pulls in torch._dynamo and sympy, about 2 s of CPU that every process importing crdist's models
# (the driver, each train and eval worker) paid even for studies that build none of them.
from crdist.models.backbones import densenet, hf_encoder, mobilenet, resnet, small_cnn, vit  # noqa: E402,F401
