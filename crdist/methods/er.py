"""er: experience replay. Each step trains on the current batch together with a batch drawn from a
reservoir buffer of the samples seen so far (all earlier tasks, and this one's): one cross-entropy
over both. With ``model.head: per_task`` each sample's cross-entropy sees only its own task's
classes: a replayed sample's are those of the task it was stored from.

Distributed: one reservoir per rank (see ``replay.py``). Inputs are stored as the model sees them,
so it runs on image and text streams, at every ZeRO stage (it only changes the loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.config import require
from crdist.data.samples import concat
from crdist.methods import METHODS
from crdist.methods.base import MethodContext, Phase
from crdist.methods.replay import ReplayConfig, ReplayMethod


@dataclass(frozen=True)
class ERConfig(ReplayConfig):
    minibatch: int | None = None
    """Replayed samples per step and rank; null = train.batch_size."""

    def validate(self) -> None:
        super().validate()
        require(self.minibatch is None or self.minibatch >= 1, "minibatch", f"must be at least 1 (got {self.minibatch})")


@METHODS.register("er")
class ER(ReplayMethod):
    name = "er"
    Config = ERConfig

    def __init__(self, context: MethodContext, config: ERConfig = ERConfig()):
        super().__init__(context, config)

    def loss(self, model, inputs, labels, phase: Phase) -> torch.Tensor:
        self.store_after_step(inputs, labels)
        if len(self.buffer) == 0:
            return F.cross_entropy(self.task_logits(model(inputs)), labels)
        replay, replay_labels, _, replay_tasks = self.replay(self.config.minibatch or len(labels), labels.device)
        logits = model(concat([inputs, replay]))
        tasks = torch.cat([torch.full_like(labels, self.context.task.index), replay_tasks])
        return F.cross_entropy(self.task_logits(logits, tasks), torch.cat([labels, replay_labels]))
