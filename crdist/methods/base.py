"""The small interface every method implements.

The training loop asks a method for its *phases* (consecutive step ranges, each with its own
learning rate and a fresh optimizer state) and for the *loss* of each batch. The defaults are
plain supervised training: one phase, cross-entropy through the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.data.manifest import TaskRecord


@dataclass(frozen=True)
class Phase:
    name: str
    steps: int
    train_backbone: bool  # False: backbone frozen (no gradients, BatchNorm statistics fixed)
    lr: float  # peak learning rate of this phase's schedule


@dataclass(frozen=True)
class TaskContext:
    """What a method may know about the task it trains on."""

    task: TaskRecord
    num_classes: int
    head: str  # "shared" or "per_task"
    lr: float  # the study's train.lr


class Method:
    name = "base"

    def __init__(self, context: TaskContext):
        self.context = context
        self._mask = None
        if context.head == "per_task":
            mask = torch.ones(context.num_classes, dtype=torch.bool)
            mask[context.task.classes] = False
            self._mask = mask  # True where a logit belongs to another task

    @classmethod
    def from_study(cls, context: TaskContext, study) -> "Method":
        """Build from the study config; a method with its own config section overrides this."""
        return cls(context)

    def phases(self, total_steps: int) -> list[Phase]:
        return [Phase("train", total_steps, train_backbone=True, lr=self.context.lr)]

    def loss(self, model, images: torch.Tensor, labels: torch.Tensor, phase: Phase) -> torch.Tensor:
        logits = model(images, freeze_backbone=not phase.train_backbone)
        if self._mask is not None:
            logits = logits.masked_fill(self._mask.to(logits.device), float("-inf"))
        return F.cross_entropy(logits, labels)


def build_method(name: str, context: TaskContext, study) -> Method:
    from crdist.methods import METHODS

    return METHODS.get(name).from_study(context, study)
