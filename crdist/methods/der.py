"""der and derpp: dark experience replay (Buzzega et al., 2020). A reservoir buffer keeps each
sample with the logits the model gave it when it was seen; each step adds α · MSE between the
model's logits on a replayed batch and those stored logits, which distils the earlier model's
whole output, not just its labels. DER++ adds β · cross-entropy on the labels of a second
replayed batch.

With ``model.head: per_task`` every term sees only each sample's own task's classes (a replayed
sample's task is the one it was stored from): the cross-entropies mask the other logits, and the
MSE is the mean over the logits of each replayed sample's own task.

Distributed: one reservoir per rank (see ``replay.py``). Logits are computed in the loss's forward
pass, before the optimizer step, as in the reference code, and stored whole. Only the loss changes,
so it runs at every ZeRO stage and on text streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.config import require
from crdist.methods import METHODS
from crdist.methods.base import MethodContext, Phase
from crdist.methods.replay import ReplayConfig, ReplayMethod


@dataclass(frozen=True)
class DERConfig(ReplayConfig):
    alpha: float = 0.4
    """Weight of the logit-matching term (the paper's code: 0.4)."""
    minibatch: int | None = None
    """Replayed samples per step and rank; null = train.batch_size."""

    def validate(self) -> None:
        super().validate()
        require(self.alpha >= 0, "alpha", f"must be non-negative (got {self.alpha})")
        require(self.minibatch is None or self.minibatch >= 1, "minibatch", f"must be at least 1 (got {self.minibatch})")


@dataclass(frozen=True)
class DERPPConfig(DERConfig):
    beta: float = 0.5
    """Weight of the replayed labels' cross-entropy."""

    def validate(self) -> None:
        super().validate()
        require(self.beta >= 0, "beta", f"must be non-negative (got {self.beta})")


@METHODS.register("der")
class DER(ReplayMethod):
    name = "der"
    Config = DERConfig
    keeps_logits = True

    def __init__(self, context: MethodContext, config: DERConfig = DERConfig()):
        super().__init__(context, config)

    def loss(self, model, inputs, labels, phase: Phase) -> torch.Tensor:
        logits = model(inputs)
        self.store_after_step(inputs, labels, logits.detach())
        loss = F.cross_entropy(self.task_logits(logits), labels)
        if len(self.buffer) == 0:
            return loss
        count = self.config.minibatch or len(labels)
        replay, _, stored, tasks = self.replay(count, labels.device)
        loss = loss + self.config.alpha * self.logits_distance(model(replay), stored, tasks)
        return loss + self.replay_labels_loss(model, count, labels.device)

    def logits_distance(self, logits: torch.Tensor, stored: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """MSE between the model's logits of replayed samples and the stored ones: over every
        logit, or with ``model.head: per_task`` over each sample's own task's logits."""
        own = self.task_mask(tasks)
        if own is None:
            return F.mse_loss(logits, stored)
        return F.mse_loss(logits[own], stored[own])

    def replay_labels_loss(self, model, count: int, device) -> torch.Tensor | float:
        return 0.0


@METHODS.register("derpp")
class DERPP(DER):
    name = "derpp"
    Config = DERPPConfig

    def __init__(self, context: MethodContext, config: DERPPConfig = DERPPConfig()):
        super().__init__(context, config)

    def replay_labels_loss(self, model, count: int, device) -> torch.Tensor:
        replay, labels, _, tasks = self.replay(count, device)
        return self.config.beta * F.cross_entropy(self.task_logits(model(replay), tasks), labels)
