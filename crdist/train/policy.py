"""When a worker checkpoints, and when it stops: the same decision on every rank at every step.

Step-count checkpoints need no agreement (every rank counts the same steps); time-based ones, stop
requests and preemption notices do, so each step the ranks combine their flags in one tiny
all-reduce. With more than one rank that all-reduce runs in the background while the next step
computes, and its sum is acted on at that next step: a time-based checkpoint, a stop or a
preemption checkpoint comes one step later than it was asked for, and still at the same step on
every rank. Waiting for it at every step was 4 % of a training step of the demo's small CNN
(py-spy): a gloo round trip on the critical path of a 12-ms step.
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


class Agreement:
    """Per-rank flags summed over all ranks, one step late when there is more than one rank.

    ``exchange(flags)`` starts the all-reduce of this step's flags and returns the sums of the
    previous step's (all False at the first step). Every rank calls it at the same steps, so every
    rank gets the same sums at the same step; collectives of one process group run in the order
    they were issued, so the ones DeepSpeed issues meanwhile cannot cross it.
    """

    def __init__(self, accelerator):
        dist = torch.distributed
        self.accelerator = accelerator
        self.overlapped = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.lag = 1 if self.overlapped else 0  # steps between raising flags and getting their sums
        self.pending = None  # (work, flags) of the all-reduce in flight

    def exchange(self, flags: torch.Tensor) -> list[bool]:
        if not self.overlapped:
            return (self.accelerator.reduce(flags, reduction="sum") > 0).tolist()
        work = torch.distributed.all_reduce(flags, async_op=True)
        previous, self.pending = self.pending, (work, flags)
        return self._settled(previous) if previous is not None else [False] * len(flags)

    def settle(self) -> None:
        """Wait for the all-reduce in flight (its flags are no longer needed)."""
        if self.pending is not None:
            self._settled(self.pending)
            self.pending = None

    @staticmethod
    def _settled(pending) -> list[bool]:
        work, flags = pending
        work.wait()
        return (flags > 0).tolist()


class CheckpointPolicy:
    def __init__(self, cfg: CheckpointConfig, stop: StopWatcher | None = None,
                 preemption: PreemptionNotice | None = None):
        self.cfg = cfg
        self.stop = stop
        self.preemption = preemption
        self.last_save = time.monotonic()
        self.preempted_nodes: tuple = ()  # set by the decision that saves for a preemption notice
        self.agreement: Agreement | None = None  # made at the first decision, when the ranks are up
        # The steps of the last save and of the last notice read: a flag raised at or before them
        # (agreed one step late) is stale, and must not save or read twice.
        self.saved_step = self.read_step = -1

    def decide(self, step: int, total: int, accelerator) -> tuple[bool, bool]:
        """(save a checkpoint now, stop after it). A collective: every rank calls it every step."""
        time_due = self.cfg.every_minutes > 0 and time.monotonic() - self.last_save >= 60 * self.cfg.every_minutes
        stop_requested = self.stop is not None and self.stop.requested()
        notice_due = self.preemption is not None and self.preemption.due()
        flags = torch.tensor([float(time_due), float(stop_requested), float(notice_due)], device=accelerator.device)
        if self.agreement is None:
            self.agreement = Agreement(accelerator)
        time_due, stop, notice_due = self.agreement.exchange(flags)
        raised = step - self.agreement.lag  # the step whose flags these are
        time_due = time_due and raised > self.saved_step
        notice_due = notice_due and raised > self.read_step
        # A preemption notice: checkpoint at once, and train on. If the node goes, Ray Train restarts
        # the workers from this step; if the drain is cancelled, nothing was lost.
        self.preempted_nodes = ()
        if notice_due and self.preemption is not None:
            self.preempted_nodes, self.read_step = self.preemption.news(), step
        by_steps = self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0
        if step >= total:  # the task is done: its final weights are written next, not a checkpoint
            return False, False
        save = stop or time_due or by_steps or bool(self.preempted_nodes)
        if save:
            self.saved_step = step
        return save, stop

    def finish(self) -> None:
        """After the last decision: the all-reduce still in flight completes."""
        if self.agreement is not None:
            self.agreement.settle()

    def stop_requested(self, accelerator) -> bool:
        """Whether any rank has seen a stop request. A collective, like ``decide``."""
        flag = torch.tensor([float(self.stop is not None and self.stop.requested())], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def saved(self) -> None:
        self.last_save = time.monotonic()
