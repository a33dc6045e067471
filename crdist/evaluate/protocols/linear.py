"""linear: a logistic-regression probe on frozen features of the adaptation subset (or, with
evaluate.adapt: train, of the task's whole train split).

The L2 strength is chosen by stratified cross-validation on those samples alone; the
test split is touched once, to score the chosen probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crdist.config import require
from crdist.evaluate.context import EvalContext
from crdist.evaluate.protocols import PROTOCOLS


@dataclass(frozen=True)
class LinearConfig:
    # Inverse regularisation strengths tried; cross-validation picks one.
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    folds: int = 3

    def validate(self) -> None:
        require(len(self.c_grid) >= 1 and all(c > 0 for c in self.c_grid), "c_grid", "must list positive values")
        require(self.folds >= 2, "folds", f"must be at least 2 (got {self.folds})")


def _probe(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def choose_c(features: np.ndarray, labels: np.ndarray, grid: list[float], folds: int, seed: int) -> float:
    """Stratified cross-validation over the classes with enough adaptation samples for the folds
    (down to 2 folds); when fewer than two classes have two samples, the middle of the grid."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    counts = np.bincount(labels)
    for k in range(folds, 1, -1):  # as many folds as at least two classes can fill
        classes = np.flatnonzero(counts >= k)
        if len(classes) >= 2:
            break
    else:
        return sorted(grid)[len(grid) // 2]
    usable = np.isin(labels, classes)
    features, labels = features[usable], labels[usable]
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    scores = [cross_val_score(_probe(c), features, labels, cv=splitter).mean() for c in sorted(grid)]
    return sorted(grid)[int(np.argmax(scores))]  # ties go to the strongest regularisation


@PROTOCOLS.register("linear")
def linear(context: EvalContext) -> float:
    adapt, test = (f.numpy() for f in context.features())
    labels = context.bank_labels.numpy()
    cfg = context.config.linear
    c = choose_c(adapt, labels, cfg.c_grid, cfg.folds, context.seed)
    if len(np.unique(labels)) < 2:  # one class to adapt on: it is the only possible answer
        return float((context.test_labels.numpy() == labels[0]).mean())
    probe = _probe(c).fit(adapt, labels)
    return float((probe.predict(test) == context.test_labels.numpy()).mean())
