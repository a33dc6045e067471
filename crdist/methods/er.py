"""er: experience replay. Each step trains on the current batch together with a batch drawn from a
reservoir buffer of the samples seen so far (all earlier tasks, and this one's).

Distributed: one reservoir per rank over that rank's share of the stream, the total ``size``
split across ranks, seeded per (seed, method, rank) (see ``buffer.py``). Inputs are stored as
the model sees them (normalised images, or token ids), so it runs on image and text streams, at
every ZeRO stage (it only changes the loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.config import require
from crdist.methods import METHODS
from crdist.methods.base import Method, MethodContext, Phase
from crdist.data.samples import concat, to_device
from crdist.methods.buffer import ReservoirBuffer


@dataclass(frozen=True)
class ERConfig:
    size: int = 256  # samples in the buffer, over all ranks (the paper's code: 256)
    minibatch: int | None = None  # replayed samples per step and rank; null = train.batch_size

    def validate(self) -> None:
        require(self.size >= 1, "size", f"must be at least 1 (got {self.size})")
        require(self.minibatch is None or self.minibatch >= 1, "minibatch", f"must be at least 1 (got {self.minibatch})")


@METHODS.register("er")
class ER(Method):
    name = "er"
    Config = ERConfig

    def __init__(self, context: MethodContext, config: ERConfig = ERConfig()):
        super().__init__(context, config)
        self.buffer = ReservoirBuffer.for_rank(config.size, context.seed, self.name, context.rank, context.world)
        self._current = None

    def loss(self, model, inputs, labels, phase: Phase) -> torch.Tensor:
        self._current = (inputs, labels)
        if len(self.buffer) == 0:
            return F.cross_entropy(model(inputs), labels)
        replay, replay_labels, _, _ = self.buffer.sample(self.config.minibatch or len(labels))
        both = concat([inputs, to_device(replay, labels.device)])
        return F.cross_entropy(model(both), torch.cat([labels, replay_labels.to(labels.device)]))

    def after_step(self) -> None:
        inputs, labels = self._current
        self.buffer.add(inputs, labels, self.context.task.index)

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    @classmethod
    def reshard_state(cls, states: list[dict], world: int, seed: int) -> list[dict]:
        buffers = ReservoirBuffer.reshard([s["buffer"] for s in states], world, seed, cls.name)
        return [{"buffer": buffer} for buffer in buffers]

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
