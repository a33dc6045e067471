"""Progress events as scalars: the one mapping every tracker logs, so that TensorBoard, MLflow and
W&B show the same series under the same tags.

    train/<method>/loss, lr, samples_per_s        at the method's global step: the planned steps
                                                   of its earlier tasks plus the step in this task
    train/<method>/task_samples_per_s, task_seconds    at the task number (one per finished job)
    eval/<method>/<protocol>/task-<j>              at the checkpoint's row i; c_0 (row 0) is shared
                                                   by the methods, so it is logged under each
    report/<method>/<protocol>/<metric>            at the number of tasks (the final checkpoint)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scalar:
    tag: str
    step: int
    value: float
    # What ``step`` counts, one name per family of series (e.g. "train/sgd/step"). W&B has one
    # global step, so it plots each tag against its axis, logged beside it.
    axis: str


@dataclass(frozen=True)
class Plan:
    """The study's train jobs as the driver planned them: steps per (method, task)."""

    steps: dict  # (method, task) → steps

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(method for method, _ in self.steps))

    def global_step(self, method: str, task: int, step: int) -> int:
        return sum(n for (m, t), n in self.steps.items() if m == method and t < task) + step


def scalars_of(event: dict, plan: Plan) -> list[Scalar]:
    """The scalars one event stands for; none for the events that carry no measurement."""
    kind = event.get("kind")
    if kind == "train":
        method = event["method"]
        step = plan.global_step(method, event["task"], event["step"])
        return _present([(f"train/{method}/{name}", step, event.get(name), f"train/{method}/step")
                         for name in ("loss", "lr", "samples_per_s")])
    if kind == "train_done":
        method, task = _job_of(event)
        return _present([
            (f"train/{method}/task_samples_per_s", task, event.get("samples_per_second"), f"train/{method}/task"),
            (f"train/{method}/task_seconds", task, event.get("seconds"), f"train/{method}/task"),
        ])
    if kind == "eval_done":
        checkpoint = event["checkpoint"]
        methods = plan.methods if checkpoint == "c_0" else [checkpoint.rsplit("/", 1)[0]]
        return _present([(f"eval/{method}/{protocol}/task-{event['task']}", event["row"], value,
                          f"eval/{method}/checkpoint")
                         for method in methods for protocol, value in event["accuracy"].items()])
    if kind == "report":
        return _present([(f"report/{method}/{protocol}/{metric}", event["tasks"], value, "report/tasks")
                         for method, protocols in event["metrics"].items()
                         for protocol, metrics in protocols.items()
                         for metric, value in metrics.items()])
    return []


def _job_of(event: dict) -> tuple[str, int]:
    """(method, task) of a train_done event. Events written before they carried both name the job
    only, as "<method>/task-<i>"."""
    if "method" in event and "task" in event:
        return event["method"], event["task"]
    method, _, task = event["job"].rpartition("/task-")
    return method, int(task)


def _present(items: list[tuple]) -> list[Scalar]:
    # A metric can be undefined (forgetting with one task is null): nothing to plot.
    return [Scalar(tag, step, float(value), axis) for tag, step, value, axis in items
            if isinstance(value, (int, float)) and not isinstance(value, bool)]
