"""Everything a protocol needs to measure one checkpoint on one task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from crdist.evaluate.features import extract_features, stream_features
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
    # What kNN's bank and the linear probe are fitted on, streamed in batches of (inputs, task-local
    # labels) (evaluate.adapt: train); None = the adaptation subset above.
    bank: Callable[[], Iterator[tuple[object, torch.Tensor]]] | None = None
    _features: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _bank_labels: torch.Tensor | None = field(default=None, repr=False)

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(bank, test) features of the checkpoint, computed once and shared by protocols; the bank
        is the adaptation subset, or the task's train split streamed in batches."""
        if self._features is None:
            backbone = self.model.backbone
            if self.bank is None:
                bank, self._bank_labels = extract_features(backbone, self.adapt_inputs), self.adapt_labels
            else:
                bank, self._bank_labels = stream_features(backbone, self.bank())
            self._features = (bank, extract_features(backbone, self.test_inputs))
        return self._features

    def has_features(self) -> bool:
        return self._features is not None

    @property
    def bank_labels(self) -> torch.Tensor:
        """The labels of ``features()[0]``."""
        self.features()
        return self._bank_labels
