"""Start an embedded Ray cluster, or join a running one, for the duration of a study.

Which one is decided here, never by Ray's own guessing: ``ray.init()`` without an address would
join whatever cluster ``RAY_ADDRESS`` or the machine's last ``ray start`` names, and then refuse the
``num_cpus`` crdist passes. So:

- an address (``--address``, ``cluster.address``, or else ``RAY_ADDRESS``, which ``ray job submit``
  and a KubeRay RayJob set for their entrypoint) joins that cluster; ``auto`` joins the one ``ray
  start`` started on this machine;
- no address starts a private cluster (``address="local"``) that belongs to this driver alone, so
  any number of studies can run side by side on one machine, beside a ``ray start`` cluster too.

Either way Ray's token authentication stays on: a process without the token cannot join the
cluster (and run code as its owner). Ray writes the token it makes (``~/.ray/auth_token``)
readable by everyone on the machine; crdist makes it first, readable by its owner only
(``keep_token_private``).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
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


def token_file() -> Path | None:
    """The file Ray reads its token from, or None when it comes from ``RAY_AUTH_TOKEN`` itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def keep_token_private() -> None:
    """Make Ray's token file, readable by its owner only, before Ray makes it readable by all (mode
    0644); narrow a file of ours that is already there. A file of another owner is left alone."""
    path = token_file()
    if path is None:
        return
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another driver made it a moment ago
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))  # what Ray makes: 64 hex digits
    stat = path.stat()
    if stat.st_mode & 0o077 and stat.st_uid == os.getuid():
        os.chmod(path, 0o600)


def quiet_token_notice(record: logging.LogRecord) -> bool:
    # Ray announces on every start that token authentication is on; it stays on (docs/distributed.md).
    return "Token authentication is enabled" not in record.getMessage()


def cluster_address(given: str | None, configured: str | None) -> tuple[str | None, str]:
    """The cluster to join (None: start a private one) and where that choice came from."""
    if given:
        return given, "--address"
    if configured:
        return configured, "cluster.address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, ""


@contextmanager
def ray_cluster(study, address: str | None, say) -> Iterator[str]:
    import ray

    address, origin = cluster_address(address, study.cluster.address)
    train, evaluate = study.train, study.evaluate
    needed = train.workers * train.cpus_per_worker
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(quiet_token_notice)
    _quiet_worker_startup_notices()
    if address:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise ClusterError(f"cannot join the Ray cluster at {address} (from {origin}): {err}") from None
        description = f"joined the Ray cluster at {address} (from {origin})"
    else:
        # Nothing of this private cluster may point elsewhere: its processes inherit this
        # environment, and a stale RAY_ADDRESS there would send their own ray calls astray.
        os.environ.pop("RAY_ADDRESS", None)
        # Ray Train's controller looks at its workers every 2 s by default, so each train job ended
        # up to 2 s after its last step (measured on the demo: 2.3 s per job from the last step to
        # the job's end; 0.6 s with 0.2). Its processes inherit this environment; a value the
        # user set wins.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        if os.environ.get("RAY_AUTH_MODE", "token") == "token":
            keep_token_private()
        # Room for one train job plus one evaluation, so evaluations overlap training even on a
        # 2-core machine (the per-job start-up is mostly waiting, not computing).
        cpus = study.cluster.num_cpus or max(os.cpu_count() or 1, math.ceil(needed + evaluate.cpus))
        ray.init(
            address="local",  # always a new cluster of its own, whatever runs on this machine
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
        if evaluate.gpus > 0 and resources.get("GPU", 0) < evaluate.gpus:
            raise ClusterError(
                f"evaluate.gpus is {evaluate.gpus:g} per evaluation, but the Ray cluster has "
                f"{resources.get('GPU', 0):g} GPUs; set evaluate.gpus: 0 to evaluate on CPUs"
            )
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        say(f"ray    {description} ({nodes} node{'s' if nodes != 1 else ''}, {available:g} CPUs)")
        yield description
    finally:
        ray.shutdown()
