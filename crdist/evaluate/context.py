"""Everything a protocol needs to measure one checkpoint on one task.

The test split (and, with ``evaluate.adapt: train``, the kNN bank and probe's train split) is
streamed in batches of ``evaluate.batch_size``: an evaluation holds one batch of decoded inputs and
the features of the split, never the split's inputs, so its memory does not grow with the images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from crdist.evaluate.features import extract_features, stream_features
from crdist.models.classifier import Classifier

Batches = Callable[[], Iterator[tuple[object, torch.Tensor]]]  # a fresh pass over (inputs, labels) batches


@dataclass
class EvalContext:
    model: Classifier  # the checkpoint c_i, on ``device``; protocols must not modify it
    adapt_inputs: object  # the adaptation subset: images (a tensor) or tokenised text (a dict of tensors)
    adapt_labels: torch.Tensor  # task-local labels 0..num_classes-1
    test: Batches  # the test split with task-local labels
    num_classes: int
    seed: int
    config: object  # crdist.evaluate.config.EvalConfig
    # What kNN's bank and the linear probe are fitted on (evaluate.adapt: train); None = the
    # adaptation subset above.
    bank: Batches | None = None
    device: torch.device = torch.device("cpu")
    # What protocols report beyond their accuracy (the linear probe's solver and C), by protocol.
    details: dict = field(default_factory=dict)
    # Seconds spent computing the shared features (the first protocol that asks pays them).
    feature_seconds: float = 0.0
    _features: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _bank_labels: torch.Tensor | None = field(default=None, repr=False)
    _test_labels: torch.Tensor | None = field(default=None, repr=False)

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(bank, test) features of the checkpoint, on the CPU, computed once and shared by protocols."""
        if self._features is None:
            started = time.perf_counter()
            backbone = self.model.backbone
            if self.bank is None:
                bank = extract_features(backbone, self.adapt_inputs, device=self.device)
                self._bank_labels = self.adapt_labels
            else:
                bank, self._bank_labels = stream_features(backbone, self.bank(), self.device)
            test, labels = self.test_features(backbone)
            self._features = (bank, test)
            self.feature_seconds = time.perf_counter() - started
        return self._features

    def test_features(self, backbone: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``backbone``'s features of the test split, streamed, and its labels."""
        test, labels = stream_features(backbone, self.test(), self.device)
        if self._test_labels is None:
            self._test_labels = labels
        return test, labels

    def has_features(self) -> bool:
        return self._features is not None

    @property
    def bank_labels(self) -> torch.Tensor:
        """The labels of ``features()[0]``."""
        self.features()
        return self._bank_labels

    @property
    def test_labels(self) -> torch.Tensor:
        if self._test_labels is None:
            self._test_labels = torch.cat([labels for _, labels in self.test()])
        return self._test_labels


def in_batches(inputs, labels: torch.Tensor, batch_size: int = 256) -> Batches:
    """Inputs already in memory as a stream of batches (tests, small splits)."""
    from crdist.data.samples import count, take

    return lambda: ((take(inputs, slice(i, i + batch_size)), labels[i:i + batch_size])
                    for i in range(0, count(inputs), batch_size))
