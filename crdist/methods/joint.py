"""joint: a reference that, at task i, trains on the train splits of tasks 1..i together: what
sequential training could keep at best, the ceiling the continual methods are measured against.

Its job streams the shards of every task so far (seeded by task i, split across ranks like any
other stream), so task i costs about i times the steps of the others, unless ``train.max_steps``
caps it. With ``model.head: per_task`` its loss sees the classes of every task so far. It keeps no
state: each task starts from c_{i-1} and the data holds the past.
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
        if self._mask is not None:
            mask = torch.ones(context.num_classes, dtype=torch.bool)
            mask[list(context.classes_so_far)] = False
            self._mask = mask

    @classmethod
    def tasks_to_stream(cls, task: int) -> tuple[int, ...]:
        return tuple(range(1, task + 1))
