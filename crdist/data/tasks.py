"""Split one labelled set into a class-incremental stream of tasks, each with train/test/adapt splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "test", "adapt")


@dataclass
class TaskSplit:
    index: int  # 1-based, as in the paper's T1..TT
    classes: list[int]
    indices: dict[str, np.ndarray]  # split name -> row indices into the source set

    @property
    def name(self) -> str:
        return f"task-{self.index}"


def class_incremental(
    labels: np.ndarray,
    *,
    tasks: int,
    classes_per_task: int,
    class_order: list[int] | None,
    test_fraction: float,
    adapt_per_class: int,
    seed: int,
) -> list[TaskSplit]:
    """Tasks of ``classes_per_task`` classes in ``class_order``.

    Per class, a seeded permutation puts ``test_fraction`` of the rows in the test split and the
    rest in train; the adaptation subset is the first ``adapt_per_class`` train rows of that
    permutation, so it is fixed for a seed and never overlaps the test split.
    """
    present = sorted(int(c) for c in np.unique(labels))
    order = list(class_order) if class_order is not None else present
    needed = tasks * classes_per_task
    if len(order) < needed:
        raise ValueError(f"{tasks} tasks × {classes_per_task} classes need {needed} classes; the source has {len(order)}")
    missing = [c for c in order[:needed] if c not in present]
    if missing:
        raise ValueError(f"class_order names classes {missing} that the source does not have (it has {present})")

    rng = np.random.default_rng(seed)
    per_class: dict[int, dict[str, np.ndarray]] = {}
    for c in order[:needed]:
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(rows)))
        test, train = rows[:n_test], rows[n_test:]
        if len(train) < adapt_per_class or n_test == 0:
            raise ValueError(
                f"class {c} has {len(rows)} samples: too few for a test share of {test_fraction} "
                f"and {adapt_per_class} adaptation samples"
            )
        per_class[c] = {"train": np.sort(train), "test": np.sort(test), "adapt": np.sort(train[:adapt_per_class])}

    stream = []
    for t in range(tasks):
        classes = order[t * classes_per_task : (t + 1) * classes_per_task]
        indices = {s: np.concatenate([per_class[c][s] for c in classes]) for s in SPLITS}
        stream.append(TaskSplit(index=t + 1, classes=classes, indices=indices))
    return stream
