"""What the benchmark modules share: the raw-data root, and the two ways to cut a stream."""

from __future__ import annotations

from pathlib import Path

from crdist.data.config import DataConfig
from crdist.data.sources.base import Source, SourceError
from crdist.data.tasks import Limits, TaskSplit, class_incremental, domain_incremental, task_classes_in_order


def root(cfg: DataConfig, what: str) -> Path:
    if cfg.root is None:
        raise SourceError(f"benchmark {cfg.benchmark} reads its raw files from data.root (or --root): {what}")
    return Path(cfg.root).expanduser()


def class_stream(cfg: DataConfig, source: Source, default_classes_per_task: int) -> list[TaskSplit]:
    if cfg.task_classes is not None:
        index = {name: i for i, name in enumerate(source.class_names)}
        unknown = [n for group in cfg.task_classes for n in group if n not in index]
        if unknown:
            raise SourceError(f"data.task_classes names classes the source does not have: {unknown}")
        groups = [[index[n] for n in group] for group in cfg.task_classes]
        if cfg.tasks is not None and cfg.tasks > len(groups):
            raise SourceError(f"data.tasks={cfg.tasks}, but data.task_classes lists {len(groups)} tasks")
        groups = groups[: cfg.tasks]
    else:
        groups = task_classes_in_order(len(source.class_names), cfg.tasks,
                                       cfg.classes_per_task or default_classes_per_task, cfg.class_order)
    return class_incremental(source, task_classes=groups, test_fraction=cfg.test_fraction,
                             adapt_per_class=cfg.adapt_per_class, seed=cfg.seed, limits=_limits(cfg))


def _limits(cfg: DataConfig) -> Limits:
    return Limits(train=cfg.train_per_class, test=cfg.test_per_class)


def domain_stream(cfg: DataConfig, source: Source, domains: list[str]) -> list[TaskSplit]:
    """One task per domain, in the order given; a domain with no samples is an error, never a task
    dropped without a word."""
    if cfg.tasks is not None and cfg.tasks > len(domains):
        raise SourceError(f"data.tasks={cfg.tasks}, but {cfg.benchmark} has {len(domains)} tasks "
                          f"({', '.join(domains)})")
    return domain_incremental(source, domains=domains[: cfg.tasks], test_fraction=cfg.test_fraction,
                              adapt_per_class=cfg.adapt_per_class, seed=cfg.seed, limits=_limits(cfg))
