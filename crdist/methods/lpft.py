"""lpft: at each task, a linear probe on frozen features first, then fine-tune everything.

Training the head first means fine-tuning starts from a head that already fits the task, so the
early, large gradients of a mismatched head do not distort the pretrained features (Kumar et al.,
2022); Sun et al. (2023) show this makes continued pretraining forget less. Both phases train on
the plain cross-entropy (with ``model.head: per_task``, over the task's own classes' logits).
"""

from __future__ import annotations

from dataclasses import dataclass

from crdist.config import require
from crdist.methods import METHODS
from crdist.methods.base import Method, MethodContext, Phase


@dataclass(frozen=True)
class LPFTConfig:
    probe_fraction: float = 0.3
    """Share of each task's steps spent on the probe (head only, backbone and its BatchNorm frozen)."""
    probe_lr: float = 0.01
    """Peak learning rate of the probe; fine-tuning then restarts the schedule at train.lr with a
    fresh optimizer state."""

    def validate(self) -> None:
        require(0.0 < self.probe_fraction <= 1.0, "probe_fraction", f"must be in (0, 1] (got {self.probe_fraction})")
        require(self.probe_lr > 0, "probe_lr", f"must be positive (got {self.probe_lr})")


@METHODS.register("lpft")
class LPFT(Method):
    name = "lpft"
    Config = LPFTConfig

    def __init__(self, context: MethodContext, config: LPFTConfig = LPFTConfig()):
        super().__init__(context, config)

    def phases(self, total_steps: int) -> list[Phase]:
        probe = min(total_steps, max(1, round(self.config.probe_fraction * total_steps)))
        return [
            Phase("probe", probe, train_backbone=False, lr=self.config.probe_lr),
            Phase("finetune", total_steps - probe, train_backbone=True, lr=self.context.lr),
        ]
