"""When a worker checkpoints, and when it stops: the same decision on every rank at every step.

Step-count checkpoints need no agreement (every rank counts the same steps); time-based ones and
stop requests do, so each step the ranks combine their flags in one tiny all-reduce.
"""

from __future__ import annotations

import threading
import time

import torch

from crdist.train.checkpoint import CheckpointConfig


class StopWatcher:
    """Polls the driver's stop flag (a Ray actor) in a background thread, so a step never waits on it."""

    def __init__(self, flag, interval: float = 0.5):
        self._flag = flag
        self._interval = interval
        self._requested = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="crdist-stop-watcher", daemon=True)
        self._thread.start()

    def requested(self) -> bool:
        return self._requested.is_set()

    def close(self) -> None:
        self._closed.set()

    def _poll(self) -> None:
        import ray

        while not self._closed.wait(self._interval):
            try:
                if ray.get(self._flag.requested.remote(), timeout=30):
                    self._requested.set()
                    return
            except ray.exceptions.GetTimeoutError:
                continue  # a slow answer: ask again
            except ray.exceptions.RayActorError:
                return  # the driver is gone: Ray ends this job itself


class CheckpointPolicy:
    def __init__(self, cfg: CheckpointConfig, stop: StopWatcher | None = None):
        self.cfg = cfg
        self.stop = stop
        self.last_save = time.monotonic()

    def decide(self, step: int, total: int, accelerator) -> tuple[bool, bool]:
        """(save a checkpoint now, stop after it). A collective: every rank calls it every step."""
        time_due = self.cfg.every_minutes > 0 and time.monotonic() - self.last_save >= 60 * self.cfg.every_minutes
        stop_requested = self.stop is not None and self.stop.requested()
        flags = torch.tensor([float(time_due), float(stop_requested)], device=accelerator.device)
        time_due, stop = (accelerator.reduce(flags, reduction="sum") > 0).tolist()
        by_steps = self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0
        if step >= total:  # the task is done: its final weights are written next, not a checkpoint
            return False, False
        return stop or time_due or by_steps, stop

    def stop_requested(self, accelerator) -> bool:
        """Whether any rank has seen a stop request. A collective, like ``decide``."""
        flag = torch.tensor([float(self.stop is not None and self.stop.requested())], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def saved(self) -> None:
        self.last_save = time.monotonic()
