"""linear: a logistic-regression probe on frozen features of the adaptation subset (or, with
evaluate.adapt: train, of the task's whole train split).

The L2 strength is chosen by stratified cross-validation on those samples alone; the
test split is touched once, to score the chosen probe.

Two solvers minimise the same objective (``crdist/evaluate/logistic.py`` states it):
scikit-learn's ``LogisticRegression`` (lbfgs), refitted per C and fold, is the reference and
serves small problems; crdist's torch solver fits the C grid as one warm-started path, on the
evaluation's GPU when it has one, and serves large ones. ``solver: auto`` takes scikit-learn
below ``torch_above`` (samples × feature dimensions) on the CPU, and the torch solver otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from crdist.config import require
from crdist.evaluate import logistic
from crdist.evaluate.context import EvalContext
from crdist.evaluate.protocols import PROTOCOLS

SOLVERS = ("auto", "sklearn", "torch")


@dataclass(frozen=True)
class LinearConfig:
    """linear: a logistic-regression probe on frozen features, its L2 strength cross-validated."""

    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    """Inverse regularisation strengths tried; cross-validation picks one."""
    folds: int = 3
    """Stratified cross-validation folds (fewer when classes have too few samples, down to 2)."""
    solver: str = "auto"
    """auto, sklearn (scikit-learn's lbfgs, refitted per C and fold) or torch (crdist's solver, the
    C grid as one warm-started path, on the evaluation's GPU when it has one); auto = torch on a GPU
    or above torch_above, sklearn otherwise."""
    torch_above: float = 2e6
    """With solver: auto on the CPU, problems of more samples × feature dimensions than this use
    the torch solver (2e6: e.g. 4,000 samples of 512 dimensions)."""

    def validate(self) -> None:
        require(len(self.c_grid) >= 1 and all(c > 0 for c in self.c_grid), "c_grid", "must list positive values")
        require(self.folds >= 2, "folds", f"must be at least 2 (got {self.folds})")
        require(self.solver in SOLVERS, "solver", f"must be one of {', '.join(SOLVERS)} (got {self.solver!r})")
        require(self.torch_above >= 0, "torch_above", f"must be at least 0 (got {self.torch_above})")


def pick_solver(cfg: LinearConfig, samples: int, dims: int, device: torch.device) -> str:
    if cfg.solver != "auto":
        return cfg.solver
    return "torch" if device.type != "cpu" or samples * dims > cfg.torch_above else "sklearn"


def _sklearn_probe(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def _cv_splits(labels: np.ndarray, folds: int, seed: int):
    """Stratified folds over the classes with enough adaptation samples for them (down to 2
    folds): (the usable samples' indices, [(train, held-out) positions within them]); None when
    fewer than two classes have two samples."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    for k in range(folds, 1, -1):  # as many folds as at least two classes can fill
        classes = np.flatnonzero(counts >= k)
        if len(classes) >= 2:
            break
    else:
        return None
    usable = np.flatnonzero(np.isin(labels, classes))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return usable, list(splitter.split(usable, labels[usable]))


def choose_c(features: np.ndarray, labels: np.ndarray, grid: list[float], folds: int, seed: int,
             solver: str = "sklearn", device: torch.device = torch.device("cpu")) -> float:
    """The C of the grid with the best mean held-out accuracy (ties go to the strongest
    regularisation); when fewer than two classes have two samples, the middle of the grid."""
    grid = sorted(grid)
    folds_of = _cv_splits(labels, folds, seed)
    if folds_of is None:
        return grid[len(grid) // 2]
    usable, splits = folds_of
    x, y = features[usable], labels[usable]
    if solver == "torch":
        scores = logistic.cross_validated_accuracy(torch.as_tensor(x), torch.as_tensor(y), grid, splits, device)
    else:
        from sklearn.model_selection import cross_val_score

        scores = [cross_val_score(_sklearn_probe(c), x, y, cv=splits).mean() for c in grid]
    return grid[int(np.argmax(scores))]


@PROTOCOLS.register("linear")
def linear(context: EvalContext) -> float:
    adapt, test = context.features()
    labels = context.bank_labels.numpy()
    cfg = context.config.linear
    solver = pick_solver(cfg, *adapt.shape, context.device)
    c = choose_c(adapt.numpy(), labels, cfg.c_grid, cfg.folds, context.seed, solver, context.device)
    context.details["linear"] = {"solver": solver, "c": c}
    if len(np.unique(labels)) < 2:  # one class to adapt on: it is the only possible answer
        return float((context.test_labels.numpy() == labels[0]).mean())
    if solver == "torch":
        path = [value for value in sorted(cfg.c_grid) if value <= c]
        probe = logistic.fit_path(adapt, torch.as_tensor(labels), path, context.device)[-1]
        predicted = probe.predict(test).cpu().numpy()
    else:
        predicted = _sklearn_probe(c).fit(adapt.numpy(), labels).predict(test.numpy())
    return float((predicted == context.test_labels.numpy()).mean())
