"""knn: cosine k-nearest neighbours on frozen features of the adaptation subset (or, with
evaluate.adapt: train, of the task's whole train split; k is capped at the bank's size)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.config import require
from crdist.evaluate.context import EvalContext
from crdist.evaluate.protocols import PROTOCOLS


@dataclass(frozen=True)
class KNNConfig:
    """knn: cosine k-nearest neighbours on frozen features."""

    k: int = 5
    """Neighbours that vote (at most the bank's size)."""
    temperature: float = 0.1
    """Each of the k neighbours votes exp(cosine similarity / temperature) for its class (the
    InstDisc / LUMP convention, 0.1 in the paper's code): always positive, and sharper for
    closer neighbours."""

    def validate(self) -> None:
        require(self.k >= 1, "k", f"must be at least 1 (got {self.k})")
        require(self.temperature > 0, "temperature", f"must be positive (got {self.temperature})")


def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int, num_classes: int,
                temperature: float = 0.1):
    """Each test point takes the class with the largest summed weight exp(cos / temperature) among
    its k nearest training points (by cosine similarity).

    The weights must be positive: summing raw cosines, a class whose neighbours all have negative
    similarity (text encoders give those) would lose to a class with no neighbour at all.
    """
    similarity = F.normalize(test, dim=1) @ F.normalize(train, dim=1).T
    top, index = similarity.topk(min(k, len(train)), dim=1)
    votes = torch.zeros(len(test), num_classes, dtype=similarity.dtype)
    votes.scatter_add_(1, train_labels[index], (top / temperature).exp())
    return votes.argmax(dim=1)


@PROTOCOLS.register("knn")
def knn(context: EvalContext) -> float:
    adapt, test = context.features()
    cfg = context.config.knn
    predicted = knn_predict(adapt, context.bank_labels, test, cfg.k, context.num_classes, cfg.temperature)
    return (predicted == context.test_labels).float().mean().item()
