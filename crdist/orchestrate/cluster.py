"""Start an embedded Ray cluster, or join a running one, for the duration of a study."""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from typing import Iterator

from crdist.errors import CrdistError


class ClusterError(CrdistError, RuntimeError):
    pass


def _quiet_worker_startup_notices() -> None:
    """Drop the raylet's "N worker processes have been started" notices from the terminal.

    Every Ray Train job starts fresh worker processes (actors are not reused), so a study of T
    tasks trips this notice again and again although nothing is wrong. Ray prints raylet notices
    straight to stdout from ``ray._private.worker``; other raylet messages still get through.
    """
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_crdist_filtered", False):
        return

    def filtered(data, ignore_prefix: bool):
        lines = [line for line in data.get("lines", []) if "worker processes have been started" not in line]
        if lines:
            original({**data, "lines": lines}, ignore_prefix)

    filtered._crdist_filtered = True
    ray_worker.print_to_stdstream = filtered


def _quiet_token_notice(record: logging.LogRecord) -> bool:
    # Ray announces on every start that token authentication is on; it stays on (see README).
    return "Token authentication is enabled" not in record.getMessage()


@contextmanager
def ray_cluster(study, address: str | None, say) -> Iterator[str]:
    import ray

    address = address or study.cluster.address
    train, evaluate = study.train, study.evaluate
    needed = train.workers * train.cpus_per_worker
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_quiet_token_notice)
    _quiet_worker_startup_notices()
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        description = f"joined the Ray cluster at {address}"
    else:
        # Room for one train job plus one evaluation, so evaluations overlap training even on a
        # 2-core machine (the per-job start-up is mostly waiting, not computing).
        cpus = study.cluster.num_cpus or max(os.cpu_count() or 1, math.ceil(needed + evaluate.cpus))
        ray.init(
            num_cpus=cpus,
            include_dashboard=study.cluster.dashboard,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        description = f"started a local Ray cluster with {cpus} CPUs"
    try:
        resources = ray.cluster_resources()
        available = resources.get("CPU", 0)
        if available < needed:
            raise ClusterError(
                f"a train job needs {train.workers} workers × {train.cpus_per_worker} CPUs = {needed:g} CPUs, "
                f"but the Ray cluster has {available:g}; lower train.workers or add nodes"
            )
        if train.use_gpu and resources.get("GPU", 0) < train.workers:
            raise ClusterError(
                f"train.use_gpu is set and a train job needs {train.workers} GPUs, "
                f"but the Ray cluster has {resources.get('GPU', 0):g}"
            )
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        say(f"ray    {description} ({nodes} node{'s' if nodes != 1 else ''}, {available:g} CPUs)")
        yield description
    finally:
        ray.shutdown()
