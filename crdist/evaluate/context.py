"""Everything a protocol needs to measure one checkpoint on one task."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from crdist.evaluate.features import extract_features
from crdist.models.classifier import Classifier


@dataclass
class EvalContext:
    model: Classifier  # the checkpoint c_i; protocols must not modify it
    adapt_inputs: object  # images (a tensor) or tokenised text (a dict of tensors)
    adapt_labels: torch.Tensor  # task-local labels 0..num_classes-1
    test_inputs: object
    test_labels: torch.Tensor
    num_classes: int
    seed: int
    config: object  # crdist.evaluate.config.EvalConfig
    _features: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(adapt, test) features of the checkpoint, computed once and shared by protocols."""
        if self._features is None:
            self._features = (
                extract_features(self.model.backbone, self.adapt_inputs),
                extract_features(self.model.backbone, self.test_inputs),
            )
        return self._features
