"""agem: averaged gradient episodic memory (Chaudhry et al., 2019). A memory holds samples of the
earlier tasks; each step also computes the gradient g_ref of the loss on a memory batch, and when
the step's gradient g points against it (g · g_ref < 0) projects it onto the half-space that does
not increase that loss: g ← g − (g · g_ref / g_ref · g_ref) · g_ref. At each task end,
``size // tasks`` samples of the task join the memory (a reservoir, the replay methods' buffer,
but filled at task end instead of after every step), as in the paper's code. With
``model.head: per_task`` the memory loss masks each sample to the classes of the task it came from.

Distributed: the gradient hook gets g as DeepSpeed holds it after the backward, averaged over
ranks; each rank computes its memory batch's gradient and g_ref is their all-reduced mean, so every
rank projects the same global gradient, and the projection goes back into DeepSpeed's gradient
partitions before the step. The memory gradient is taken through the model's whole weights: ZeRO
0–2. Memory per rank: the buffer, plus two flattened gradients during a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crdist.config import require
from crdist.data.samples import take
from crdist.methods import METHODS
from crdist.methods.base import MethodContext, trainable, unwrap
from crdist.methods.replay import ReplayConfig, ReplayMethod


@dataclass(frozen=True)
class AGEMConfig(ReplayConfig):
    minibatch: int | None = None
    """Memory samples per step and rank; null = train.batch_size."""

    def validate(self) -> None:
        super().validate()
        require(self.minibatch is None or self.minibatch >= 1, "minibatch", f"must be at least 1 (got {self.minibatch})")


def project(gradient: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection of a flattened gradient: unchanged unless it conflicts with ``reference``."""
    dot = torch.dot(gradient, reference)
    if dot >= 0:
        return gradient
    return gradient - (dot / torch.dot(reference, reference).clamp_min(1e-12)) * reference


@METHODS.register("agem")
class AGEM(ReplayMethod):
    name = "agem"
    Config = AGEMConfig
    state_key = "memory"
    zero_stages = (0, 1, 2)
    zero_stage_limit = "its memory gradient needs every weight whole on every rank, which ZeRO-3 partitions"
    hooks_gradients = True

    def __init__(self, context: MethodContext, config: AGEMConfig = AGEMConfig()):
        super().__init__(context, config)
        self.batch_size = 0
        self.projected_steps = 0  # steps of this task whose gradient was projected

    def loss(self, model, inputs, labels, phase):
        self.batch_size = len(labels)
        return super().loss(model, inputs, labels, phase)

    def on_gradients(self, model, grads: list[torch.Tensor], lr: float) -> list[torch.Tensor]:
        if len(self.buffer) == 0:  # the same on every rank: each adds the same count at each task end
            return grads
        params = [p for _, p in trainable(model)]
        reference = torch.autograd.grad(self.memory_loss(model, params[0].device), params, allow_unused=True)
        g = _flatten(grads, params)
        g_ref = self.context.all_reduce_mean(_flatten(reference, params))
        projected = project(g, g_ref)
        self.projected_steps += int(not torch.equal(projected, g))
        return _unflatten(projected, params)

    def memory_loss(self, model, device) -> torch.Tensor:
        """The loss on a batch drawn from the memory, whose gradient is g_ref."""
        inputs, labels, _, tasks = self.replay(self.config.minibatch or self.batch_size, device)
        return F.cross_entropy(self.task_logits(unwrap(model)(inputs), tasks), labels)

    def end_task(self, model) -> None:
        """Add this rank's share of ``size // tasks`` samples of the task to the memory."""
        context = self.context
        share = max(1, self.config.size // context.num_tasks // context.world)
        added = 0
        for inputs, labels in context.batches(0):
            n = min(len(labels), share - added)
            self.buffer.add(take(inputs, slice(0, n)), labels[:n], context.task.index)
            added += n
            if added >= share:
                break


def _flatten(grads, params) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)])


def _unflatten(flat: torch.Tensor, params) -> list[torch.Tensor]:
    out, offset = [], 0
    for p in params:
        out.append(flat[offset : offset + p.numel()].view_as(p).to(p.dtype))
        offset += p.numel()
    return out
