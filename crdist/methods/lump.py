"""lump: mixup between the current batch and a replayed one (Madaan et al., 2022, supervised
variant). With λ ~ Beta(α, α), the model sees λ·x + (1−λ)·x_buffer and is trained towards both
labels: λ·CE(y) + (1−λ)·CE(y_buffer). The paper's code weighs the first term 1 instead of λ (a
bug it notes); crdist uses the mixup loss as written above. Until the buffer holds samples (the
first task's first step) it is plain cross-entropy.

With ``model.head: per_task`` each term sees only its sample's task's classes: CE(y) the current
task's, CE(y_buffer) those of the task the replayed sample was stored from.

Distributed: one reservoir per rank (see ``replay.py``); λ is drawn per step and rank from a
generator seeded per (seed, method, rank), kept in the method's state. Mixing needs image inputs:
a text stream is refused before training starts. Only the loss changes: every ZeRO stage.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.config import require
from crdist.methods import METHODS
from crdist.methods.base import MethodContext, Phase
from crdist.methods.replay import ReplayConfig, ReplayMethod
from crdist.seeding import derive_seed


@dataclass(frozen=True)
class LUMPConfig(ReplayConfig):
    alpha: float = 0.4
    """The mixing weight's distribution: λ ~ Beta(alpha, alpha) (the paper's code: 0.4)."""

    def validate(self) -> None:
        super().validate()
        require(self.alpha > 0, "alpha", f"must be positive (got {self.alpha})")


@METHODS.register("lump")
class LUMP(ReplayMethod):
    name = "lump"
    Config = LUMPConfig
    modalities = ("image",)

    def __init__(self, context: MethodContext, config: LUMPConfig = LUMPConfig()):
        super().__init__(context, config)
        self.mixing = random.Random(derive_seed(context.seed, "mixup", self.name, context.rank))
        self.last_mix: float | None = None  # λ of the last step (for tests and logs)

    def loss(self, model, inputs, labels, phase: Phase) -> torch.Tensor:
        self.store_after_step(inputs, labels)
        if len(self.buffer) == 0:
            return F.cross_entropy(self.task_logits(model(inputs)), labels)
        lam = self.mixing.betavariate(self.config.alpha, self.config.alpha)
        replay, replay_labels, _, replay_tasks = self.replay(len(labels), labels.device)
        if len(replay_labels) < len(labels):  # a buffer still smaller than a batch: mix what there is
            inputs, labels = inputs[: len(replay_labels)], labels[: len(replay_labels)]
        self.last_mix = lam
        logits = model(self.mix(inputs, replay, lam))
        return (lam * F.cross_entropy(self.task_logits(logits), labels)
                + (1 - lam) * F.cross_entropy(self.task_logits(logits, replay_tasks), replay_labels))

    @staticmethod
    def mix(inputs: torch.Tensor, replay: torch.Tensor, lam: float) -> torch.Tensor:
        return lam * inputs + (1 - lam) * replay

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mixing": self.mixing.getstate()}

    @classmethod
    def reshard_state(cls, states: list[dict], world: int, seed: int) -> list[dict]:
        """The buffers dealt out as every replay method's; each new rank gets a λ generator of its
        own, seeded by the new rank and the old world size (so the resume is deterministic)."""
        resharded = super().reshard_state(states, world, seed)
        for rank, state in enumerate(resharded):
            state["mixing"] = random.Random(derive_seed(seed, "mixup", cls.name, rank, "resharded", len(states))).getstate()
        return resharded

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mixing.setstate(_as_tuple(state["mixing"]))


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
