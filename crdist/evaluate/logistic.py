"""Multinomial logistic regression in torch: full-batch L-BFGS along a path of regularisation
strengths, each fit warm-started from the previous one, on the evaluation's device.

It minimises the objective scikit-learn's ``LogisticRegression(C=c)`` minimises, divided by
``c · n`` (the same minimiser):

    mean cross-entropy(x W + b, y) + ||W||² / (2 · c · n),   intercept b not penalised,

on features standardised like ``StandardScaler`` (mean 0, population std 1; a constant feature is
only centred). Why a second solver: scikit-learn refits from zero for every C of the grid and
every fold, on the CPU, which is fine for the thousands of samples of an adaptation subset and
slow for tens of thousands of samples with thousands of feature dimensions and a hundred
classes. Along an ascending C path the previous minimiser is a close start, so each further C
costs a fraction of a cold fit (``crdist bench eval`` measures both), and on a GPU the matrix
products are the GPU's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# L-BFGS stops when every gradient entry is below this (the objective is a mean, so the scale
# does not grow with n), or after MAX_ITERATIONS. scikit-learn's lbfgs stops at 1e-4 on the same
# objective. Under weak regularisation the objective itself is small (0.004 at C = 100 on digits),
# and 1e-5 stops there 0.25 % above the minimum (4 of 1,197 test predictions differ from
# scikit-learn's); 1e-6 reaches it within 0.004 %, but made a 20,000 × 2,048 × 100 probe cost
# about 1.5× as much, no faster than scikit-learn (docs/performance.md, "crdist bench eval").
GRADIENT_TOLERANCE = 1e-5
MAX_ITERATIONS = 1000


@dataclass
class Standardiser:
    mean: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Standardiser":
        scale = x.std(dim=0, unbiased=False)
        return cls(x.mean(dim=0), torch.where(scale > 0, scale, torch.ones_like(scale)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


@dataclass
class SoftmaxProbe:
    """One fitted probe: standardiser, weights, and the labels its columns stand for."""

    standardiser: Standardiser
    weight: torch.Tensor  # (dims, classes)
    bias: torch.Tensor  # (classes,)
    classes: torch.Tensor  # (classes,) original label values
    iterations: int = 0

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardiser(x.to(self.weight.device, self.weight.dtype))
        return self.classes[(x @ self.weight + self.bias).argmax(dim=1)]


def fit_path(
    x: torch.Tensor, labels: torch.Tensor, c_values: list[float], device: torch.device
) -> list[SoftmaxProbe]:
    """One probe per C, in ascending C (strongest regularisation first); each fit starts from the
    previous C's minimiser. The standardiser is fitted once on ``x``."""
    dtype = torch.float32
    x = x.to(device, dtype)
    classes, targets = torch.unique(labels.to(device), return_inverse=True)
    standardiser = Standardiser.fit(x)
    x = standardiser(x)
    n, dims = x.shape
    weight = torch.zeros(dims, len(classes), dtype=dtype, device=device, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=dtype, device=device, requires_grad=True)
    probes = []
    for c in sorted(c_values):
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=MAX_ITERATIONS,
            tolerance_grad=GRADIENT_TOLERANCE,
            tolerance_change=1e-12,
            history_size=20,
            line_search_fn="strong_wolfe",
        )
        penalty = 1.0 / (2.0 * c * n)

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ weight + bias, targets)
            loss = loss + penalty * (weight * weight).sum()
            loss.backward()
            return loss

        optimizer.step(objective)
        iterations = optimizer.state[optimizer._params[0]].get("n_iter", 0)
        probes.append(SoftmaxProbe(standardiser, weight.detach().clone(), bias.detach().clone(), classes, iterations))
    return probes


def cross_validated_accuracy(
    x: torch.Tensor, labels: torch.Tensor, c_values: list[float], splits, device: torch.device
) -> np.ndarray:
    """Mean held-out accuracy per C (ascending C) over the given (train, held-out) index splits."""
    scores = np.zeros((len(splits), len(c_values)))
    for fold, (train, held_out) in enumerate(splits):
        train, held_out = torch.as_tensor(train), torch.as_tensor(held_out)
        for j, probe in enumerate(fit_path(x[train], labels[train], c_values, device)):
            predicted = probe.predict(x[held_out]).cpu()
            scores[fold, j] = (predicted == labels[held_out]).double().mean().item()
    return scores.mean(axis=0)
