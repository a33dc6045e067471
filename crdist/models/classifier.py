"""A backbone with one linear head: what continued pretraining trains and every checkpoint stores."""

from __future__ import annotations

import torch
from torch import nn

from crdist.models.backbones import BACKBONES


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x, freeze_backbone: bool = False) -> torch.Tensor:
        """``x``: images, or a text backbone's tokenised fields (a dict of tensors)."""
        if freeze_backbone:
            # No graph through the backbone: its parameters get no gradient at all.
            with torch.no_grad():
                features = self.backbone(x)
            return self.head(features)
        return self.head(self.backbone(x))


def build_classifier(model_cfg, in_channels: int, num_classes: int, seed: int,
                     image_size: int | None = None) -> Classifier:
    """Seeded, so every process builds the same initial weights. ``in_channels`` is 0 for text;
    ``image_size`` is the side of the stream's square images (a ViT is built for it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module, feature_dim = BACKBONES.get(model_cfg.backbone)(in_channels, model_cfg, image_size)
        return Classifier(module, feature_dim, num_classes)
