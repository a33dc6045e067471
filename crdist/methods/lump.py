"""lump: mixup between the current batch and a replayed one (Madaan et al., 2022, supervised
variant). With λ ~ Beta(α, α), the model sees λ·x + (1−λ)·x_buffer and is trained towards both
labels: λ·CE(y) + (1−λ)·CE(y_buffer). The paper's code weighs the first term 1 instead of λ (a
bug it notes); crdist uses the mixup loss as written above. Until the buffer holds samples (the
first task's first step) it is plain cross-entropy.

Distributed: one reservoir per rank (see ``buffer.py``); λ is drawn per step and rank from a
generator seeded per (seed, method, rank), kept in the method's state. Mixing needs image inputs:
a text stream is refused before training starts. Only the loss changes: every ZeRO stage.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.config import require
from crdist.data.samples import to_device
from crdist.methods import METHODS
from crdist.methods.base import Method, MethodContext, Phase
from crdist.methods.buffer import ReservoirBuffer
from crdist.seeding import derive_seed


@dataclass(frozen=True)
class LUMPConfig:
    size: int = 256  # samples in the buffer, over all ranks (the paper's code: 256)
    alpha: float = 0.4  # λ ~ Beta(alpha, alpha) (the paper's code: 0.4)

    def validate(self) -> None:
        require(self.size >= 1, "size", f"must be at least 1 (got {self.size})")
        require(self.alpha > 0, "alpha", f"must be positive (got {self.alpha})")


@METHODS.register("lump")
class LUMP(Method):
    name = "lump"
    Config = LUMPConfig
    modalities = ("image",)

    def __init__(self, context: MethodContext, config: LUMPConfig = LUMPConfig()):
        super().__init__(context, config)
        self.buffer = ReservoirBuffer.for_rank(config.size, context.seed, self.name, context.rank, context.world)
        self.mixing = random.Random(derive_seed(context.seed, "mixup", self.name, context.rank))
        self._current = None
        self.last_mix: float | None = None  # λ of the last step (for tests and logs)

    def loss(self, model, inputs, labels, phase: Phase) -> torch.Tensor:
        self._current = (inputs, labels)
        if len(self.buffer) == 0:
            return F.cross_entropy(self.task_logits(model(inputs)), labels)
        lam = self.mixing.betavariate(self.config.alpha, self.config.alpha)
        replay, replay_labels, _, _ = self.buffer.sample(len(labels))
        replay, replay_labels = to_device(replay, inputs.device), replay_labels.to(labels.device)
        if len(replay_labels) < len(labels):  # a buffer still smaller than a batch: mix what there is
            inputs, labels = inputs[: len(replay_labels)], labels[: len(replay_labels)]
        self.last_mix = lam
        logits = model(self.mix(inputs, replay, lam))
        return lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, replay_labels)

    @staticmethod
    def mix(inputs: torch.Tensor, replay: torch.Tensor, lam: float) -> torch.Tensor:
        return lam * inputs + (1 - lam) * replay

    def after_step(self) -> None:
        inputs, labels = self._current
        self.buffer.add(inputs, labels, self.context.task.index)

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict(), "mixing": self.mixing.getstate()}

    @classmethod
    def reshard_state(cls, states: list[dict], world: int, seed: int) -> list[dict]:
        buffers = ReservoirBuffer.reshard([s["buffer"] for s in states], world, seed, cls.name)
        mixing = [random.Random(derive_seed(seed, "mixup", cls.name, rank, "resharded", len(states)))
                  for rank in range(world)]
        return [{"buffer": buffer, "mixing": m.getstate()} for buffer, m in zip(buffers, mixing)]

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.mixing.setstate(_as_tuple(state["mixing"]))


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
