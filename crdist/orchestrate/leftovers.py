"""End what a killed driver's embedded Ray cluster left running.

A driver SIGKILLed with its process group takes its GCS and raylet along, but Ray's worker
processes (actors such as ``ray::TrainController``, train workers, idle workers) each run in a
process group of their own. They normally exit once they notice their raylet is gone; one that
does not (seen: a TrainController killed as it was starting, alive with ~1 GB resident an hour
later) would otherwise pile up with every preemption of a long-lived node.

Every process of an embedded cluster inherits the environment of the driver that started it
(driver → gcs_server / raylet → workers), so the driver marks its environment with the run
directory and a token of its own before ``ray.init``. Whoever next holds the run directory's lock
ends every process that carries the run directory with another token: only a dead driver can have
left those, since the lock admits one driver at a time. A driver that ends normally also ends its
own stragglers after ``ray.shutdown()``.

A joined cluster (``--address``, ``RAY_ADDRESS``) runs its processes with its own environment and
cleans up after a dead driver itself (Ray ends the job's actors); nothing here touches it.
Linux only (``/proc``); elsewhere this finds nothing.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

RUN_VARIABLE = "CRDIST_RUN_DIR"
TOKEN_VARIABLE = "CRDIST_DRIVER_TOKEN"


def mark_environment(run_root: Path) -> str:
    """Mark this process's environment (inherited by the Ray cluster it starts); returns its token."""
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.environ[RUN_VARIABLE] = str(Path(run_root).resolve())
    os.environ[TOKEN_VARIABLE] = token
    return token


def processes_of_run(run_root: Path, other_than: str | None = None) -> list[int]:
    """Pids of live processes marked with ``run_root`` (and a token other than ``other_than``)."""
    run = f"{RUN_VARIABLE}={Path(run_root).resolve()}".encode()
    mine = f"{TOKEN_VARIABLE}={other_than}".encode() if other_than else None
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if run in variables and (mine is None or mine not in variables):
            found.append(int(entry.name))
    return found


def end_processes(pids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL whatever is still there after ``grace`` seconds; returns those that
    were alive to be ended."""
    ended = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
            ended.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + grace
    while ended and time.monotonic() < deadline and any(_alive(p) for p in ended):
        time.sleep(0.1)
    for pid in ended:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return ended


def end_leftovers(run_root: Path, token: str) -> list[int]:
    """End the processes an earlier driver of ``run_root`` left behind; returns their pids."""
    return end_processes(processes_of_run(run_root, other_than=token))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is already dead
    except (OSError, IndexError):
        return False
