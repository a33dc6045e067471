"""One task's continued pretraining as a Ray Train job: a TorchTrainer over N workers."""

from __future__ import annotations

import json
from pathlib import Path

from crdist.train.worker import TrainJob, train_task


def _train_loop_per_worker(config: dict) -> None:
    job: TrainJob = config["job"]
    progress = config["progress"]

    def report(event: dict) -> None:
        if progress is not None:
            progress.put_nowait(event)

    train_task(job, report=report)


def fit(job: TrainJob, progress, storage: Path, run_name: str) -> dict:
    """Run the job to completion on the connected Ray cluster; returns the task's training summary."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    train = job.study.train
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"job": job, "progress": progress},
        scaling_config=ScalingConfig(
            num_workers=train.workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=f"{run_name}-{job.method}-task{job.task}",
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    trainer.fit()
    return json.loads(summary_path(job).read_text())


def summary_path(job: TrainJob) -> Path:
    """Training summary written by rank 0 beside the weights (before them: weights mean done)."""
    return Path(job.output).with_suffix(".train.json")
