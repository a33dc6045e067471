"""knn: cosine k-nearest neighbours on frozen features of the adaptation subset."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.config import require
from crdist.evaluate.context import EvalContext
from crdist.evaluate.protocols import PROTOCOLS


@dataclass(frozen=True)
class KNNConfig:
    k: int = 5

    def validate(self) -> None:
        require(self.k >= 1, "k", f"must be at least 1 (got {self.k})")


def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int, num_classes: int):
    """Each test point takes the class with the largest summed cosine similarity among its k
    nearest training points: a similarity-weighted vote."""
    similarity = F.normalize(test, dim=1) @ F.normalize(train, dim=1).T
    top, index = similarity.topk(min(k, len(train)), dim=1)
    votes = torch.zeros(len(test), num_classes, dtype=similarity.dtype)
    votes.scatter_add_(1, train_labels[index], top)
    return votes.argmax(dim=1)


@PROTOCOLS.register("knn")
def knn(context: EvalContext) -> float:
    adapt, test = context.features()
    predicted = knn_predict(adapt, context.adapt_labels, test, context.config.knn.k, context.num_classes)
    return (predicted == context.test_labels).float().mean().item()
