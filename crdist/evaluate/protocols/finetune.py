"""finetune: fine-tune a copy of the checkpoint, with a new head, on the adaptation subset.

Its score is noisy (a random head, a few dozen random batches): ``repeats`` averages it over R
seeded draws, and the evaluation records each draw's accuracy and their spread, so a user can buy
that noise down and see what is left. Draw r's seed depends on the evaluation seed (study seed and
task: crdist/evaluate/job.py ``eval_seed``) and r alone, so every row and method sees the same R draws.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crdist.config import require
from crdist.data.samples import take, to_device
from crdist.evaluate.context import EvalContext
from crdist.evaluate.protocols import PROTOCOLS
from crdist.seeding import derive_seed


@dataclass(frozen=True)
class FinetuneConfig:
    """finetune: a copy of the checkpoint with a new head, fine-tuned on the adaptation subset."""

    steps: int = 50
    """AdamW steps of fine-tuning (backbone and new head) on the adaptation subset."""
    lr: float = 0.001
    """Learning rate of the fine-tuning (constant)."""
    batch_size: int = 32
    """Samples per step, drawn at random from the adaptation subset."""
    weight_decay: float = 0.0
    """AdamW's weight decay."""
    repeats: int = 1
    """Seeded draws (head init, batches, dropout) averaged per cell; the matrix JSON records their spread."""

    def validate(self) -> None:
        require(self.steps >= 1, "steps", f"must be at least 1 (got {self.steps})")
        require(self.repeats >= 1, "repeats", f"must be at least 1 (got {self.repeats})")
        require(self.lr > 0, "lr", f"must be positive (got {self.lr})")
        require(self.batch_size >= 1, "batch_size", f"must be at least 1 (got {self.batch_size})")


@PROTOCOLS.register("finetune")
def finetune(context: EvalContext) -> float:
    """The mean test accuracy over ``finetune.repeats`` seeded draws."""
    accuracies = []
    for draw in range(context.config.finetune.repeats):
        logits, labels = finetuned_test_logits(context, with_labels=True, seed=draw_seed(context.seed, draw))
        accuracies.append((logits.argmax(dim=1) == labels).float().mean().item())
    mean = sum(accuracies) / len(accuracies)
    std = (sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1)) ** 0.5 if len(accuracies) > 1 else None
    context.details["finetune"] = {"repeats": accuracies, "std": std}
    return mean


def draw_seed(seed: int, draw: int) -> int:
    """Draw 0 uses the evaluation seed itself (one draw is what ``repeats: 1`` always measured)."""
    return seed if draw == 0 else derive_seed(seed, "finetune-draw", draw) % 2**31


def finetuned_test_logits(context: EvalContext, with_labels: bool = False, seed: int | None = None):
    """The test split's logits after fine-tuning (on the CPU), streamed; a function of the
    checkpoint, the data and the seed (default: the evaluation seed) alone. With ``with_labels``:
    (logits, labels)."""
    cfg = context.config.finetune
    seed = context.seed if seed is None else seed
    # Dropout (text backbones) draws from the global RNG: seed it too, or two evaluations of one
    # checkpoint differ.
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    backbone = copy.deepcopy(context.model.backbone)
    head = nn.Linear(context.model.feature_dim, context.num_classes)
    with torch.no_grad():  # seeded head init, independent of the global RNG
        bound = 1.0 / context.model.feature_dim**0.5
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    model = nn.Sequential(backbone, head).to(context.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    inputs, labels = context.adapt_inputs, context.adapt_labels
    model.train()
    for _ in range(cfg.steps):
        batch = torch.randperm(len(labels), generator=generator)[: cfg.batch_size]
        loss = F.cross_entropy(model(to_device(take(inputs, batch), context.device)), labels[batch].to(context.device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    features, test_labels = context.test_features(backbone)
    with torch.no_grad():
        logits = head.cpu()(features)
    return (logits, test_labels) if with_labels else logits
