"""Split a source into a stream of tasks, each with train / test / adapt splits.

Two kinds of stream:
- class-incremental (Seq-CIFAR, Seq-TinyImageNet, Fashion-MNIST, digits, image folders): task t
  holds the classes ``class_order[t·k : (t+1)·k]``;
- domain-incremental (FMoW by region or year, text datasets, sentiment domains): task t holds
  every sample of domain t, with whatever classes that domain has.

Test rows are the source's own test split; a source without one (digits, sentiment) gives each
class a seeded ``test_fraction`` of its rows. The adaptation subset is a seeded
``adapt_per_class`` rows per class drawn from the task's train split, so it never overlaps test. It is drawn
as a seeded order of each class's train rows, cut at ``adapt_per_class`` only once the shards are
written: a train sample skipped as unreadable (``--skip-corrupt``) is passed over, and the next one
in the order takes its place.

``train_per_class`` / ``test_per_class`` (optional) keep a seeded subset of each class's train and
test rows, for runs sized to a small machine; the adaptation subset is then drawn from the kept
train rows. The subsets draw from their own generator, so without them nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crdist.data.sources.base import Source

SPLITS = ("train", "test", "adapt")


class TaskError(ValueError):
    pass


@dataclass
class TaskSplit:
    index: int  # 1-based, as in the paper's T1..TT
    name: str  # "task-3", or the domain: "Asia", "ag_news", "tweets"
    classes: list[int]
    indices: dict[str, np.ndarray]  # "train" / "test" → indices into source.samples
    adapt_orders: list[np.ndarray]  # per class: its train rows in the seeded order the subset is drawn in
    adapt_per_class: int
    strict: bool = True  # class-incremental: every class must fill its adaptation subset

    def adapt(self, unreadable: set[int] = frozenset()) -> np.ndarray:
        """The adaptation subset: per class, the first ``adapt_per_class`` readable rows of its order."""
        chosen = []
        for label, order in zip(self.classes, self.adapt_orders):
            readable = order[~np.isin(order, list(unreadable))] if unreadable else order
            if self.strict and len(readable) < self.adapt_per_class:
                raise TaskError(f"task {self.index}: class {label} has {len(readable)} readable train samples, fewer "
                                f"than adapt_per_class={self.adapt_per_class}")
            chosen.append(readable[: self.adapt_per_class])
        return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


def task_classes_in_order(
    num_classes: int, tasks: int | None, classes_per_task: int, class_order: list[int] | None
) -> list[list[int]]:
    """Consecutive groups of ``classes_per_task`` classes of ``class_order`` (default 0, 1, 2, …);
    ``tasks`` = how many groups (null: as many as fit)."""
    order = list(class_order) if class_order is not None else list(range(num_classes))
    tasks = tasks or max(1, len(order) // classes_per_task)  # not 0 tasks when one does not fit
    if tasks * classes_per_task > len(order):
        raise TaskError(f"{tasks} tasks × {classes_per_task} classes need {tasks * classes_per_task} classes; "
                        f"the stream has {len(order)}")
    return [order[t * classes_per_task : (t + 1) * classes_per_task] for t in range(tasks)]


@dataclass(frozen=True)
class Limits:
    """Rows kept per class of each split; None = all."""

    train: int | None = None
    test: int | None = None


def class_incremental(
    source: Source, *, task_classes: list[list[int]], test_fraction: float, adapt_per_class: int, seed: int,
    limits: Limits = Limits(),
) -> list[TaskSplit]:
    labels = np.array([s.label for s in source.samples])
    present = set(int(c) for c in np.unique(labels))
    missing = sorted(c for classes in task_classes for c in classes if c not in present)
    if missing:
        raise TaskError(f"classes {missing} have no samples in the source")
    rows = np.arange(len(labels))
    split = _split_column(source)
    rng, subset_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    stream = []
    for t, classes in enumerate(task_classes):
        per_class = [_class_rows(rows[labels == c], split[labels == c], c, test_fraction, adapt_per_class, rng,
                                 limits=limits, subset_rng=subset_rng)
                     for c in classes]
        stream.append(_task(t + 1, f"task-{t + 1}", list(classes), per_class, adapt_per_class, strict=True))
    return stream


def domain_incremental(
    source: Source, *, domains: list[str], test_fraction: float, adapt_per_class: int, seed: int,
    limits: Limits = Limits(),
) -> list[TaskSplit]:
    labels = np.array([s.label for s in source.samples])
    domain = np.array([s.domain for s in source.samples])
    split = _split_column(source)
    rng, subset_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    stream = []
    for t, name in enumerate(domains):
        in_domain = domain == name
        if not in_domain.any():
            raise TaskError(f"task {t + 1} ({name!r}) would be empty: no samples of it (the source's domains with "
                            f"samples: {', '.join(sorted(set(domain.tolist())))})")
        classes = sorted(int(c) for c in np.unique(labels[in_domain]))
        per_class = []
        for c in classes:
            mask = in_domain & (labels == c)
            per_class.append(_class_rows(np.flatnonzero(mask), split[mask], c, test_fraction, adapt_per_class, rng,
                                         strict=False, limits=limits, subset_rng=subset_rng))
        stream.append(_task(t + 1, name, classes, per_class, adapt_per_class, strict=False))
    return stream


def _split_column(source: Source) -> np.ndarray:
    split = np.array([s.split for s in source.samples])
    if not source.has_test_split():
        split[:] = "carve"  # no official test split: carve one per class
    return split


def _class_rows(rows, split, label, test_fraction, adapt_per_class, rng, strict=True, limits: Limits = Limits(),
                subset_rng=None) -> dict[str, np.ndarray]:
    if (split == "carve").all():
        rows = rng.permutation(rows)
        n_test = int(round(test_fraction * len(rows)))
        if strict and (n_test == 0 or n_test == len(rows)):
            raise TaskError(f"class {label} has {len(rows)} samples: too few to hold out a test share of {test_fraction}")
        test, train = rows[:n_test], rows[n_test:]
    else:
        train, test = rows[split == "train"], rows[split == "test"]
        if strict and (len(train) == 0 or len(test) == 0):
            raise TaskError(f"class {label} has {len(train)} train and {len(test)} test samples; it needs both")
    if limits.train is not None and len(train) > limits.train:
        train = subset_rng.permutation(train)[: limits.train]
    if limits.test is not None and len(test) > limits.test:
        test = subset_rng.permutation(test)[: limits.test]
    if strict and len(train) < adapt_per_class:
        raise TaskError(f"class {label} has {len(train)} train samples, fewer than adapt_per_class={adapt_per_class}")
    return {"train": np.sort(train), "test": np.sort(test), "adapt_order": rng.permutation(train)}


def _task(index: int, name: str, classes: list[int], per_class: list[dict], adapt_per_class: int,
          strict: bool) -> TaskSplit:
    indices = {s: np.concatenate([p[s] for p in per_class]).astype(np.int64) for s in ("train", "test")}
    return TaskSplit(index, name, classes, indices, [p["adapt_order"] for p in per_class], adapt_per_class, strict)
