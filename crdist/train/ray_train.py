"""Continued pretraining on a chain of tasks as one Ray Train job: a TorchTrainer over N workers
that train the tasks one after another, in the same processes (``train_tasks``). A chain is a
method's tasks in order, or several methods' one method after another (the scheduler makes as
many chains as the cluster trains at once).

One job per chain, not per task: a worker group costs seconds to start (Ray Train's controller
and workers, imports, the process group), often more than a task of a small study trains. Each
task still writes its own weights, summary and checkpoints; the driver follows the weights as they
appear and evaluates each c_i while the workers go on to the next task.

Worker failures are Ray Train's to handle: with ``FailureConfig(max_failures)`` it restarts the
whole worker group, and the new workers pass over the tasks already trained and resume the one
they were on from its latest checkpoint. A preempted node
(drained first, then gone) is counted apart, against ``max_preemption_failures``; the workers
checkpoint as soon as the drain is announced, so the restart resumes from that step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from crdist.train.job import TrainJob

log = logging.getLogger("crdist.train")

# Ray Train's watcher of drained nodes polls the cluster every 5 s unless this says otherwise;
# it passes the variable on from the process that calls ``fit`` to its controller.
RAY_PREEMPTION_POLL = "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"


def _train_loop_per_worker(config: dict) -> None:
    jobs: list[TrainJob] = config["jobs"]
    progress = config["progress"]

    def report(event: dict) -> None:
        if progress is None:
            return
        try:
            progress.put_nowait(event)
        except Exception:  # progress is best effort: never let it stop training
            log.warning("could not send progress event %s", event, exc_info=True)

    import ray.train

    # Imported here, on the workers: the process that calls ``fit`` and Ray Train's controller
    # unpickle this function too, and torch's import there (seconds of CPU) only delayed the workers.
    from crdist.train.worker import train_tasks

    train_tasks(jobs, report=report, stop_flag=config["stop"], preemption_info=ray.train.get_preemption_info)


def fit_on_ray_train(jobs: list[TrainJob], progress, stop, storage: Path, run_name: str) -> dict:
    """Train ``jobs`` (a chain: each method's tasks in order) on the connected Ray cluster. Returns
    ``{"stopped": True}`` when they stopped early on request (the task then training checkpointed,
    its weights not written), else ``{"stopped": False}``; each task's summary is on disk beside
    its weights."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    todo = [job for job in jobs if not Path(job.output).is_file()]  # a retried launcher's tasks may be done
    if not todo:
        return {"stopped": False}
    if stop is not None and ray.get(stop.requested.remote()):
        return {"stopped": True}  # stopping: do not start a job only to stop it
    first = todo[0]
    train = first.train
    _watch_for_preemption_every(first.checkpoint.preemption_poll_seconds)
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"jobs": todo, "progress": progress, "stop": stop},
        scaling_config=ScalingConfig(
            num_workers=train.workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker},
            placement_strategy=train.placement,
        ),
        run_config=RunConfig(
            name=f"{run_name}-{first.method}{first.task}-{todo[-1].method}{todo[-1].task}",
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=train.max_failures,
                                         max_preemption_failures=train.max_preemption_failures),
        ),
    )
    trainer.fit()
    return {"stopped": not Path(todo[-1].output).is_file()}


def _watch_for_preemption_every(seconds: float) -> None:
    """Ray Train marks the workers of a drained node only when its watcher next polls; with Ray's
    default of 5 s, workers that look for the mark every 2 s would still see it up to 5 s late.
    Ray's watcher polls as often as the workers look, unless the environment already says how
    often (an operator's own setting wins)."""
    if seconds > 0:
        os.environ.setdefault(RAY_PREEMPTION_POLL, f"{seconds:g}")
