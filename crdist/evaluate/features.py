"""Frozen features of a backbone, in eval mode (BatchNorm uses its running statistics), on the CPU.

The backbone runs on its own device (a GPU for ``evaluate.gpus``); each batch of inputs goes there
and its features come back, so only the features of a split accumulate.
"""

from __future__ import annotations

import torch
from torch import nn

from crdist.data.samples import count, take, to_device
from crdist.memory import release_freed_memory


@torch.no_grad()
def extract_features(backbone: nn.Module, inputs, batch_size: int = 256,
                     device: torch.device = torch.device("cpu")) -> torch.Tensor:
    batches = ((take(inputs, slice(i, i + batch_size)), None) for i in range(0, count(inputs), batch_size))
    return stream_features(backbone, batches, device)[0]


@torch.no_grad()
def stream_features(backbone: nn.Module, batches, device: torch.device = torch.device("cpu")):
    """Features and labels of a stream of (inputs, labels) batches: only the features stay in
    memory, never the inputs of the whole stream. Labels may be None (then so is the second value)."""
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for i, (inputs, batch_labels) in enumerate(batches, start=1):
            # clone: a ViT's feature is a view of its class token, which would keep every token alive
            features.append(backbone(to_device(inputs, device)).float().cpu().clone())
            if batch_labels is not None:
                labels.append(batch_labels)
            if i % 8 == 0:
                release_freed_memory()  # the decoded batches' pages, pinned by the features kept
    finally:
        backbone.train(was_training)
    return torch.cat(features), (torch.cat(labels) if labels else None)
