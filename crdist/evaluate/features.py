"""Frozen features of a backbone, in eval mode (BatchNorm uses its running statistics)."""

from __future__ import annotations

import torch
from torch import nn

from crdist.data.samples import count, take


@torch.no_grad()
def extract_features(backbone: nn.Module, inputs, batch_size: int = 256) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    try:
        return torch.cat(
            [backbone(take(inputs, slice(i, i + batch_size))) for i in range(0, count(inputs), batch_size)]
        )
    finally:
        backbone.train(was_training)
