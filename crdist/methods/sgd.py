"""sgd: naive sequential fine-tuning, the baseline every continual method is measured against."""

from crdist.methods import METHODS
from crdist.methods.base import Method


@METHODS.register("sgd")
class SGD(Method):
    """Train the whole model on each task in turn with the plain supervised loss (with
    ``model.head: per_task``, over the task's own classes' logits)."""

    name = "sgd"
