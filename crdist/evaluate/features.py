"""Frozen features of a backbone, in eval mode (BatchNorm uses its running statistics)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    try:
        return torch.cat([backbone(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    finally:
        backbone.train(was_training)
