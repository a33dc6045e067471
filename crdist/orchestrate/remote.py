"""The Ray remote functions the driver submits (kept apart so workers import little)."""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0, max_retries=0)
def fit_train_job(job, progress, storage, run_name) -> dict:
    """Runs a Ray Train job from inside a task, so several jobs can be in flight at once."""
    from crdist.train.job import fit

    return fit(job, progress, storage, run_name)


@ray.remote(num_cpus=0, max_retries=0)
def deepspeed_cpu_op_cached() -> bool:
    from crdist.train.engine import cpu_comm_op_cached

    return cpu_comm_op_cached()


@ray.remote(num_cpus=0, max_retries=0)
def build_deepspeed_cpu_op() -> float:
    from crdist.train.engine import build_cpu_comm_op

    return build_cpu_comm_op()


@ray.remote(max_retries=0)
def run_eval_job(job, threads: int) -> dict:
    from crdist.evaluate.job import run_eval_job as run

    return run(job, threads)
