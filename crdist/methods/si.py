"""si: synaptic intelligence (Zenke et al., 2017), as the paper's code computes it. During a task
each weight's contribution to the loss is tracked as ω += lr · g² (the code's approximation of the
path integral); at task end the importance grows by Ω += ω / ((θ − θ_start)² + ξ), accumulated over
tasks (the paper's code overwrote Ω at each task; its later LUMP code accumulates, and so does
crdist), and the weights are anchored. Training adds c · Σ Ω · (θ − θ*)² to the cross-entropy
(with ``model.head: per_task``, over the task's own classes' logits).

Distributed: g is the step's gradient as DeepSpeed holds it before the step, averaged over ranks,
so ω, Ω and θ* are the same on every rank. The penalty needs the whole weights on every rank:
ZeRO 0–2 (ZeRO-3 partitions them). g is taken before DeepSpeed clips it (the paper's code clips
first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crdist.config import require
from crdist.methods import METHODS
from crdist.methods.base import Method, MethodContext, Phase, trainable


@dataclass(frozen=True)
class SIConfig:
    c: float = 0.4
    """Strength of the penalty (the paper's code: 0.4)."""
    xi: float = 1.0
    """ξ, the damping of the importance's denominator (the paper's code: 1)."""

    def validate(self) -> None:
        require(self.c >= 0, "c", f"must be non-negative (got {self.c})")
        require(self.xi > 0, "xi", f"must be positive (got {self.xi})")


@METHODS.register("si")
class SI(Method):
    name = "si"
    Config = SIConfig
    zero_stages = (0, 1, 2)
    zero_stage_limit = "its penalty needs every weight whole on every rank, which ZeRO-3 partitions"
    hooks_gradients = True

    def __init__(self, context: MethodContext, config: SIConfig = SIConfig()):
        super().__init__(context, config)
        self.omega: dict[str, torch.Tensor] = {}  # ω: this task's running contribution
        self.importance: dict[str, torch.Tensor] = {}  # Ω, accumulated over tasks
        self.start: dict[str, torch.Tensor] = {}  # θ at the start of this task
        self.anchor: dict[str, torch.Tensor] = {}  # θ* at the end of the last task

    def start_task(self, model) -> None:
        self.start = {n: p.detach().clone() for n, p in trainable(model)}
        self.omega = {n: torch.zeros_like(p) for n, p in trainable(model)}

    def loss(self, model, inputs, labels, phase: Phase) -> torch.Tensor:
        loss = super().loss(model, inputs, labels, phase)
        if not self.importance:
            return loss
        penalty = sum((self.importance[n] * (p - self.anchor[n]) ** 2).sum() for n, p in trainable(model))
        return loss + self.config.c * penalty

    def on_gradients(self, model, grads: list[torch.Tensor], lr: float) -> list[torch.Tensor]:
        for (name, _), g in zip(trainable(model), grads):
            self.omega[name] += lr * g.detach() ** 2
        return grads

    def end_task(self, model) -> None:
        for name, p in trainable(model):
            gained = self.omega[name] / ((p.detach() - self.start[name]) ** 2 + self.config.xi)
            self.importance[name] = self.importance[name] + gained if name in self.importance else gained
        self.anchor = {n: p.detach().clone() for n, p in trainable(model)}

    def state_dict(self) -> dict:
        return {"omega": self.omega, "importance": self.importance, "start": self.start, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.omega, self.importance = dict(state["omega"]), dict(state["importance"])
        self.start, self.anchor = dict(state["start"]), dict(state["anchor"])
