"""When a worker checkpoints, and when it stops: the same decision on every rank at every step.

Step-count checkpoints need no agreement (every rank counts the same steps); time-based ones, stop
requests and preemption notices do, so each step the ranks combine their flags in one tiny
all-reduce.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

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


class PreemptionNotice:
    """Ray's notice that a node this job runs on is about to go: a drained node (a spot or
    preemptible instance being reclaimed, `ray drain-node`, a `ray start --block` node sent SIGTERM).
    Ray Train's watcher marks every worker; ``ray.train.get_preemption_info`` reads the mark.

    Reading it is itself a collective across the job's workers (rank 0's view is broadcast), so
    every rank must read it at the same steps: the policy's per-step all-reduce decides when, at
    most once every ``every_seconds``.
    """

    def __init__(self, read: Callable[[], object], every_seconds: float):
        self._read = read
        self.every_seconds = every_seconds
        self.last_read = time.monotonic()
        self.acted_on: tuple = ()  # the preempted nodes already checkpointed for

    def due(self) -> bool:
        return time.monotonic() - self.last_read >= self.every_seconds

    def news(self) -> tuple:
        """Every rank: the preempted nodes, if any that were not acted on yet; else ()."""
        self.last_read = time.monotonic()
        info = self._read()
        nodes = tuple(sorted(info.preempted_node_ids)) if info is not None else ()
        if not nodes or set(nodes) <= set(self.acted_on):
            return ()
        self.acted_on = nodes
        return nodes


class CheckpointPolicy:
    def __init__(self, cfg: CheckpointConfig, stop: StopWatcher | None = None,
                 preemption: PreemptionNotice | None = None):
        self.cfg = cfg
        self.stop = stop
        self.preemption = preemption
        self.last_save = time.monotonic()
        self.preempted_nodes: tuple = ()  # set by the decision that saves for a preemption notice

    def decide(self, step: int, total: int, accelerator) -> tuple[bool, bool]:
        """(save a checkpoint now, stop after it). A collective: every rank calls it every step."""
        time_due = self.cfg.every_minutes > 0 and time.monotonic() - self.last_save >= 60 * self.cfg.every_minutes
        stop_requested = self.stop is not None and self.stop.requested()
        notice_due = self.preemption is not None and self.preemption.due()
        flags = torch.tensor([float(time_due), float(stop_requested), float(notice_due)], device=accelerator.device)
        time_due, stop, notice_due = (accelerator.reduce(flags, reduction="sum") > 0).tolist()
        # A preemption notice: checkpoint at once, and train on. If the node goes, Ray Train restarts
        # the workers from this step; if the drain is cancelled, nothing was lost.
        self.preempted_nodes = self.preemption.news() if notice_due and self.preemption is not None else ()
        by_steps = self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0
        if step >= total:  # the task is done: its final weights are written next, not a checkpoint
            return False, False
        return stop or time_due or by_steps or bool(self.preempted_nodes), stop

    def stop_requested(self, accelerator) -> bool:
        """Whether any rank has seen a stop request. A collective, like ``decide``."""
        flag = torch.tensor([float(self.stop is not None and self.stop.requested())], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def saved(self) -> None:
        self.last_save = time.monotonic()
