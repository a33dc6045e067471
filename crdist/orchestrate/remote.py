"""The Ray remote functions and actors the driver uses (kept apart so workers import little).

Retries cover system failures only (a lost worker process or node), never an error raised by the
job itself; every job writes its output atomically, so running it again is safe.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0, max_retries=2)
def fit_train_job(jobs, progress, stop, storage, run_name) -> dict:
    """Runs a Ray Train job (a chain of tasks, in order) from inside a task, so several jobs can be
    in flight at once."""
    from crdist.train.ray_train import fit_on_ray_train

    return fit_on_ray_train(jobs, progress, stop, storage, run_name)


@ray.remote(num_cpus=0, max_retries=0)
def deepspeed_cpu_op_cached() -> bool:
    from crdist.train.extensions import comm_op_built

    if comm_op_built():  # asked first: it costs no import of torch or DeepSpeed
        return True
    from crdist.train.engine import cpu_comm_op_cached

    return cpu_comm_op_cached()


@ray.remote(num_cpus=0, max_retries=0)
def build_deepspeed_cpu_op() -> float:
    from crdist.train.engine import build_cpu_comm_op

    return build_cpu_comm_op()


@ray.remote(max_retries=2)
def run_eval_job(job, threads: int) -> dict:
    from crdist.evaluate.job import run_eval_job as run

    return run(job, threads)


@ray.remote(num_cpus=0)
class StopFlag:
    """Raised by the driver on SIGTERM; train workers poll it and stop at a checkpoint."""

    def __init__(self):
        self._requested = False

    def request(self) -> None:
        self._requested = True

    def requested(self) -> bool:
        return self._requested
