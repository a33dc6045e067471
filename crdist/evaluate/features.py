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


@torch.no_grad()
def stream_features(backbone: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of a stream of (inputs, labels) batches: only the features stay in
    memory, never the inputs of the whole stream."""
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for inputs, batch_labels in batches:
            features.append(backbone(inputs))
            labels.append(batch_labels)
    finally:
        backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)
