"""ewc: online elastic weight consolidation (Schwarz et al., 2018). At the end of each task the
diagonal Fisher information F of the task's data is folded into a running importance
(F ← γ·F + F_task) and the weights are anchored (θ* ← θ); training then adds
(λ/2) · Σ F · (θ − θ*)² to the cross-entropy (with ``model.head: per_task``, over the task's own
classes' logits), which resists moving the weights the earlier tasks' predictions depend on.

F_task is the mean of squared per-sample gradients of the cross-entropy (the empirical Fisher;
with ``model.head: per_task`` over the task's own classes' logits, the loss it trained on), in eval
mode, over ``fisher_samples`` samples of the task's own train stream, split across ranks:
each rank takes its share of its own stream, and the sums are all-reduced, so every rank holds
the same F and θ*. Under ZeRO 0–2 every rank holds the whole weights, so F and θ* are whole too
(two extra copies of the model per rank). ZeRO-3 partitions the weights outside the forward pass,
where the penalty needs them whole: refused.

The paper's code has no EWC; λ = 10 and γ = 1 are Mammoth's seq-CIFAR-10 settings for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.config import require
from crdist.data.samples import take, to_device
from crdist.methods import METHODS
from crdist.methods.base import Method, MethodContext, Phase, trainable, unwrap


@dataclass(frozen=True)
class EWCConfig:
    lam: float = 10.0
    """λ, the strength of the penalty."""
    gamma: float = 1.0
    """γ, the decay of the earlier tasks' Fisher (online EWC); 1 = a plain sum."""
    fisher_samples: int = 256
    """Samples of the task's train stream the Fisher is estimated on, over all ranks."""

    def validate(self) -> None:
        require(self.lam >= 0, "lam", f"must be non-negative (got {self.lam})")
        require(0 <= self.gamma <= 1, "gamma", f"must be in [0, 1] (got {self.gamma})")
        require(self.fisher_samples >= 1, "fisher_samples", f"must be at least 1 (got {self.fisher_samples})")


@METHODS.register("ewc")
class EWC(Method):
    name = "ewc"
    Config = EWCConfig
    zero_stages = (0, 1, 2)
    zero_stage_limit = "its penalty needs every weight whole on every rank, which ZeRO-3 partitions"

    def __init__(self, context: MethodContext, config: EWCConfig = EWCConfig()):
        super().__init__(context, config)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def loss(self, model, inputs, labels, phase: Phase) -> torch.Tensor:
        return super().loss(model, inputs, labels, phase) + self.penalty(model)

    def penalty(self, model) -> torch.Tensor | float:
        if not self.fisher:
            return 0.0
        total = sum((self.fisher[n] * (p - self.anchor[n]) ** 2).sum() for n, p in trainable(model))
        return 0.5 * self.config.lam * total

    def end_task(self, model) -> None:
        fisher = self.estimate_fisher(model)
        for name, value in fisher.items():
            self.fisher[name] = self.config.gamma * self.fisher[name] + value if name in self.fisher else value
        self.anchor = {n: p.detach().clone() for n, p in trainable(model)}

    def estimate_fisher(self, model) -> dict[str, torch.Tensor]:
        context = self.context
        share = max(1, self.config.fisher_samples // context.world)
        params = trainable(model)
        sums = [torch.zeros_like(p) for _, p in params]
        seen = 0
        net = unwrap(model)
        was_training = net.training
        net.eval()  # one sample at a time: BatchNorm must use its running statistics
        for inputs, labels in context.batches(0):
            for i in range(min(len(labels), share - seen)):
                one = to_device(take(inputs, slice(i, i + 1)), context.device)
                loss = F.cross_entropy(self.task_logits(net(one)), labels[i : i + 1].to(context.device))
                grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
                for total, g in zip(sums, grads):
                    if g is not None:
                        total += g.detach() ** 2
                seen += 1
            if seen >= share:
                break
        net.train(was_training)
        # Every rank saw the same number of samples (equal steps per rank): a mean of means.
        return {n: context.all_reduce_mean(s / max(seen, 1)) for (n, _), s in zip(params, sums)}

    def state_dict(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.fisher, self.anchor = dict(state["fisher"]), dict(state["anchor"])
