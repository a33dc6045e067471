"""seq-digits: scikit-learn's real handwritten digits as a class-incremental stream (default 5 × 2)."""

from __future__ import annotations

from crdist.data.benchmarks import BENCHMARKS
from crdist.data.config import DataConfig
from crdist.data.sources.digits import load_digits
from crdist.data.sources.images import ImageSet
from crdist.data.tasks import TaskSplit, class_incremental


@BENCHMARKS.register("seq-digits")
def seq_digits(cfg: DataConfig) -> tuple[ImageSet, list[TaskSplit]]:
    images = load_digits()
    tasks = class_incremental(
        images.labels,
        tasks=cfg.tasks,
        classes_per_task=cfg.classes_per_task,
        class_order=cfg.class_order,
        test_fraction=cfg.test_fraction,
        adapt_per_class=cfg.adapt_per_class,
        seed=cfg.seed,
    )
    return images, tasks
