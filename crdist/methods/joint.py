"""joint: a reference that, at task i, trains on the train splits of tasks 1..i together: what
sequential training could keep at best, the ceiling the continual methods are measured against.

Its job streams the shards of every task so far (seeded by task i, split across ranks like any
other stream), so task i costs about i times the steps of the others, unless ``train.max_steps``
caps it. It keeps no state: each task starts from c_{i-1} and the data holds the past.

With ``model.head: per_task`` a sample of task t sees only task t's classes, as it did when task t
was trained. A batch carries labels, not tasks, so a sample's task is the one whose classes hold its
label; where several tasks so far share a class (a domain stream), the latest of them, whose classes
then always include the label.
"""

from __future__ import annotations

import torch

from crdist.methods import METHODS
from crdist.methods.base import Method, MethodContext


@METHODS.register("joint")
class Joint(Method):
    name = "joint"

    def __init__(self, context: MethodContext, config=None):
        super().__init__(context, config)
        self._task_of_class = None  # per_task: the task so far each class (a label) belongs to
        if context.head == "per_task":
            self._task_of_class = torch.zeros(context.num_classes, dtype=torch.long)
            for task, classes in enumerate(context.task_classes[: context.task.index], start=1):
                self._task_of_class[list(classes)] = task

    def batch_tasks(self, labels: torch.Tensor) -> torch.Tensor | None:
        if self._task_of_class is None:
            return None
        return self._task_of_class.to(labels.device)[labels]

    @classmethod
    def tasks_to_stream(cls, task: int) -> tuple[int, ...]:
        return tuple(range(1, task + 1))
