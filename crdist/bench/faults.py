"""Inject real failures into a running study and read what happened from its run directory.

Used by ``crdist bench resume`` and by the failure tests: a worker is found through the pid file
it writes (``logs/train/<method>-task<i>-rank<r>.pid``) and killed with a real signal; progress is
read from ``logs/events.jsonl``, where every event carries the worker's wall-clock ``time``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Callable, TypeVar

from crdist.errors import CrdistError

T = TypeVar("T")


class Timeout(CrdistError, RuntimeError):
    """What a failure bench or test waited for did not happen in time (or the run exited first)."""


def events(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "logs" / "events.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return out


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05, alive=None) -> T:
    """Poll ``condition`` until it returns something truthy; ``alive`` (a Popen) must keep running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise Timeout(f"the run exited (code {alive.returncode}) before {what}")
        time.sleep(interval)
    raise Timeout(f"waited {timeout:.0f} s for {what}")


def last_step(run_dir: Path, method: str, task: int) -> int:
    steps = [e["step"] for e in events(run_dir) if e.get("kind") == "train" and (e["method"], e["task"]) == (method, task)]
    return max(steps, default=0)


def checkpoint_on_disk(run_dir: Path, method: str, task: int, step: int) -> Callable[[], bool]:
    """Whether a complete checkpoint of (method, task) at ``step`` or later is on disk: seen the
    moment it is written, where a ``checkpoint`` event reaches events.jsonl through the driver's
    progress queue, seconds later on a busy machine."""
    from crdist.train.checkpoint import TaskCheckpoints

    checkpoints = TaskCheckpoints(Path(run_dir) / "checkpoints" / method / f"task-{task}")

    def reached() -> bool:
        latest = checkpoints.latest()
        return latest is not None and int(latest.name.removeprefix("step-")) >= step

    return reached


def worker_pid_file(run_dir: Path, method: str, task: int, rank: int) -> Path:
    """Written by the worker as it starts (``train_task``), before its engine is built."""
    return Path(run_dir) / "logs" / "train" / f"{method}-task{task}-rank{rank}.pid"


def worker_pid(run_dir: Path, method: str, task: int, rank: int) -> int:
    return int(worker_pid_file(run_dir, method, task, rank).read_text())


def kill(pid: int, sig: int = signal.SIGKILL) -> float:
    """Send ``sig`` to ``pid``; returns the wall-clock time it was sent."""
    sent = time.time()
    os.kill(pid, sig)
    return sent
