"""der and derpp: dark experience replay (Buzzega et al., 2020). A reservoir buffer keeps each
sample with the logits the model gave it when it was seen; each step adds α · MSE between the
model's logits on a replayed batch and those stored logits, which distils the earlier model's
whole output, not just its labels. DER++ adds β · cross-entropy on the labels of a second
replayed batch.

Distributed: one reservoir per rank (see ``buffer.py``). Logits are computed in the loss's forward
pass, before the optimizer step, as in the reference code. Only the loss changes, so it runs at
every ZeRO stage and on text streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.config import require
from crdist.data.samples import to_device
from crdist.methods import METHODS
from crdist.methods.base import Method, MethodContext, Phase
from crdist.methods.buffer import ReservoirBuffer


@dataclass(frozen=True)
class DERConfig:
    size: int = 256  # samples in the buffer, over all ranks (the paper's code: 256)
    alpha: float = 0.4  # weight of the logit-matching term (the paper's code: 0.4)
    minibatch: int | None = None  # replayed samples per step and rank; null = train.batch_size

    def validate(self) -> None:
        require(self.size >= 1, "size", f"must be at least 1 (got {self.size})")
        require(self.alpha >= 0, "alpha", f"must be non-negative (got {self.alpha})")
        require(self.minibatch is None or self.minibatch >= 1, "minibatch", f"must be at least 1 (got {self.minibatch})")


@dataclass(frozen=True)
class DERPPConfig(DERConfig):
    beta: float = 0.5  # weight of the replayed labels' cross-entropy

    def validate(self) -> None:
        super().validate()
        require(self.beta >= 0, "beta", f"must be non-negative (got {self.beta})")


@METHODS.register("der")
class DER(Method):
    name = "der"
    Config = DERConfig

    def __init__(self, context: MethodContext, config: DERConfig = DERConfig()):
        super().__init__(context, config)
        self.buffer = ReservoirBuffer.for_rank(config.size, context.seed, self.name, context.rank, context.world,
                                               keep_logits=True)
        self._current = None

    def loss(self, model, inputs, labels, phase: Phase) -> torch.Tensor:
        logits = model(inputs)
        self._current = (inputs, labels, logits.detach())
        loss = F.cross_entropy(self.task_logits(logits), labels)
        if len(self.buffer) == 0:
            return loss
        count = self.config.minibatch or len(labels)
        replay, _, stored, _ = self.buffer.sample(count)
        loss = loss + self.config.alpha * F.mse_loss(model(to_device(replay, labels.device)), stored.to(logits.device))
        return loss + self.replay_labels_loss(model, count, labels.device)

    def replay_labels_loss(self, model, count: int, device) -> torch.Tensor | float:
        return 0.0

    def after_step(self) -> None:
        inputs, labels, logits = self._current
        self.buffer.add(inputs, labels, self.context.task.index, logits=logits)

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    @classmethod
    def reshard_state(cls, states: list[dict], world: int, seed: int) -> list[dict]:
        buffers = ReservoirBuffer.reshard([s["buffer"] for s in states], world, seed, cls.name)
        return [{"buffer": buffer} for buffer in buffers]

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])


@METHODS.register("derpp")
class DERPP(DER):
    name = "derpp"
    Config = DERPPConfig

    def __init__(self, context: MethodContext, config: DERPPConfig = DERPPConfig()):
        super().__init__(context, config)

    def replay_labels_loss(self, model, count: int, device) -> torch.Tensor:
        replay, labels, _, _ = self.buffer.sample(count)
        return self.config.beta * F.cross_entropy(model(to_device(replay, device)), labels.to(device))
