"""One task's continued pretraining as a Ray Train job: a TorchTrainer over N workers.

Worker failures are Ray Train's to handle: with ``FailureConfig(max_failures)`` it restarts the
whole worker group, and each new worker resumes from the job's latest checkpoint. A preempted node
(drained first, then gone) is counted apart, against ``max_preemption_failures``; the workers
checkpoint as soon as the drain is announced, so the restart resumes from that step.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from crdist.train.worker import TrainJob, train_task

log = logging.getLogger("crdist.train")

# Ray Train's watcher of drained nodes polls the cluster every 5 s unless this says otherwise;
# it passes the variable on from the process that calls ``fit`` to its controller.
RAY_PREEMPTION_POLL = "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"


def _train_loop_per_worker(config: dict) -> None:
    job: TrainJob = config["job"]
    progress = config["progress"]

    def report(event: dict) -> None:
        if progress is None:
            return
        try:
            progress.put_nowait(event)
        except Exception:  # progress is best effort: never let it stop training
            log.warning("could not send progress event %s", event, exc_info=True)

    import ray.train

    train_task(job, report=report, stop_flag=config["stop"], preemption_info=ray.train.get_preemption_info)


def fit(job: TrainJob, progress, stop, storage: Path, run_name: str) -> dict | None:
    """Run the job on the connected Ray cluster; returns its training summary, or None when it
    stopped early on request (checkpointed, no weights written)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    train = job.train
    _watch_for_preemption_every(job.checkpoint.preemption_poll_seconds)
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"job": job, "progress": progress, "stop": stop},
        scaling_config=ScalingConfig(
            num_workers=train.workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker},
            placement_strategy=train.placement,
        ),
        run_config=RunConfig(
            name=f"{run_name}-{job.method}-task{job.task}",
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=train.max_failures,
                                         max_preemption_failures=train.max_preemption_failures),
        ),
    )
    if not Path(job.output).is_file():  # a retried launcher whose job had already finished skips this
        if stop is not None and ray.get(stop.requested.remote()):
            return None  # stopping: do not start a job only to stop it
        trainer.fit()
    return json.loads(summary_path(job).read_text()) if Path(job.output).is_file() else None


def _watch_for_preemption_every(seconds: float) -> None:
    """Ray Train marks the workers of a drained node only when its watcher next polls; with Ray's
    default of 5 s, workers that look for the mark every 2 s would still see it up to 5 s late.
    Ray's watcher polls as often as the workers look, unless the environment already says how
    often (an operator's own setting wins)."""
    if seconds > 0:
        os.environ.setdefault(RAY_PREEMPTION_POLL, f"{seconds:g}")


def summary_path(job: TrainJob) -> Path:
    """Training summary written by rank 0 beside the weights (before them: weights mean done)."""
    return Path(job.output).with_suffix(".train.json")
