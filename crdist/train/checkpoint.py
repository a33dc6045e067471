"""Mid-task checkpoints: written by every rank, complete before `latest` moves, the last K kept.

    checkpoints/<method>/task-<i>/step-000020/engine/…             DeepSpeed: model, optimizer, every rank's ZeRO partition
                                              position-rank<r>.json where rank r is in its stream, its RNG state
                                              COMPLETE              written last, by rank 0, once every rank is done;
                                                                    it holds every file's digest
                                  latest                            "step-000020"; replaced atomically after COMPLETE

A checkpoint is built in ``step-NNNNNN.partial`` and renamed into place, so a kill at any moment
(even in the middle of writing) leaves the previous checkpoint intact. Loading takes the newest
directory holding ``COMPLETE`` whose files all match the digests recorded there (``latest`` is a
convenience for people and tools, and may lag one behind after a kill); one that does not (a bit
flipped, a file cut short or deleted) is set aside as ``step-NNNNNN.damaged`` and the one before it
is taken, or the task starts again from c_{i-1} when none is left. With ``checkpoint.keep: 2`` (the
default) there is always a previous one to fall back on. Deleting renames first, so a
half-deleted checkpoint never looks complete.
The files are crdist's own: DeepSpeed reads its part with ``torch.load`` (pickle), so load only
checkpoints from a run directory you trust.

A method's state at the end of a task (replay buffers, importances) is saved here too, per rank,
beside the task's weights (``models/<method>/c_<i>.state/rank-<r>.pt``: ``save_method_state``,
``load_method_state``), each with its digest, for the next task to start from.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from crdist.atomic import disk_full, fsync_dir, out_of_room, write_json, write_text
from crdist.config import require
from crdist.errors import CrdistError
from crdist.integrity import (
    Digest,
    digest_file,
    problem,
    sealed_path,
    set_aside,
    verify,
)
from crdist.rundir import method_state_file

log = logging.getLogger("crdist.train")

COMPLETE = "COMPLETE"
LATEST = "latest"
ENGINE_TAG = "engine"


class CheckpointError(CrdistError, RuntimeError):
    pass


@dataclass(frozen=True)
class CheckpointConfig:
    """When a train job saves its periodic checkpoints (model, optimizer, method state, data position)."""

    every_steps: int = 50
    """Save every N steps (0 = never by step count); with every_minutes, whichever comes first."""
    every_minutes: float = 0.0
    """Save every M minutes (0 = never by time)."""
    keep: int = 2
    """Complete checkpoints kept per task (older ones are deleted once a newer one is complete)."""
    grace_seconds: float = 60.0
    """After SIGTERM to the driver: how long running train jobs get to checkpoint and stop."""
    preemption_poll_seconds: float = 2.0
    """Checkpoint at once when Ray says a node of the job is being preempted (drained); the workers
    look for that notice every this many seconds (0 = never)."""

    def validate(self) -> None:
        require(self.every_steps >= 0, "every_steps", f"must be non-negative, 0 = off (got {self.every_steps})")
        require(self.every_minutes >= 0, "every_minutes", f"must be non-negative, 0 = off (got {self.every_minutes})")
        require(self.keep >= 1, "keep", f"must be at least 1 (got {self.keep})")
        require(self.grace_seconds > 0, "grace_seconds", f"must be positive (got {self.grace_seconds})")
        require(self.preemption_poll_seconds >= 0, "preemption_poll_seconds",
                f"must be non-negative, 0 = off (got {self.preemption_poll_seconds})")


@dataclass
class Position:
    """Where one rank is in its task: resuming here replays nothing it already trained on."""

    step: int  # optimizer steps completed
    epoch: int  # epoch of the next batch
    batch_in_epoch: int  # batches of that epoch already consumed
    losses: list[float] = field(default_factory=list)  # progress losses reported so far
    torch_rng: str = ""  # base64 of torch's CPU generator state

    @staticmethod
    def capture(step: int, epoch: int, batch_in_epoch: int, losses: list[float]) -> "Position":
        rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")
        return Position(step, epoch, batch_in_epoch, list(losses), rng)

    def restore_rng(self) -> None:
        if self.torch_rng:
            state = torch.frombuffer(bytearray(base64.b64decode(self.torch_rng)), dtype=torch.uint8)
            torch.set_rng_state(state.clone())


class TaskCheckpoints:
    """The checkpoints of one job (one method on one task)."""

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory)
        self.keep = keep
        self.loaded: Path | None = None  # the checkpoint ``load`` restored
        self.damaged: list[dict] = []  # checkpoints ``load`` found damaged and set aside: {"file", "reason"}
        self.resharded_from: int | None = None  # the worker count that wrote it, when another

    def latest(self) -> Path | None:
        """The newest complete checkpoint. The ``latest`` file is for people and tools: a kill
        between a checkpoint's rename and the pointer's update leaves it one behind."""
        complete = [p for p in self._complete() if p.is_dir()]
        return complete[-1] if complete else None

    def save(self, engine, position: Position, rank: int, world: int, barrier, method_state: dict | None = None,
             accumulation: int = 1) -> Path:
        """Every rank calls this at the same step; returns the finished checkpoint directory.
        ``method_state``: this rank's method state (replay buffer, importances), saved beside it."""
        name = f"step-{position.step:06d}"
        final, partial = self.directory / name, self.directory / f"{name}.partial"
        if agree((final / COMPLETE).is_file()):  # rank 0's view decides, so every rank returns together
            if rank == 0:
                write_text(self.directory / LATEST, name)
            barrier()
            return final  # this exact state is already saved (training is deterministic)
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)  # left by a kill mid-write
            partial.mkdir(parents=True)
        barrier()
        try:
            engine.save_checkpoint(str(partial), tag=ENGINE_TAG, client_state={}, save_latest=False)
            if method_state:
                torch.save(method_state, partial / f"method-rank{rank}.pt")
            write_json(partial / f"position-rank{rank}.json", asdict(position))
            barrier()
            if rank == 0:
                files = _fsync_and_digest(partial)
                write_json(partial / COMPLETE, {"step": position.step, "world": world, "accumulation": accumulation,
                                                "time": time.time(), "files": files})
        except Exception as err:
            # A full disk: the partial goes (it frees the room it took) and the job stops with the
            # room it needs; the checkpoints before it are untouched.
            needed = max(_size(self.latest()), _size(partial))
            if not out_of_room(err, self.directory, needed or 1):
                raise
            shutil.rmtree(partial, ignore_errors=True)
            raise disk_full(self.directory, f"the checkpoint {name}", needed) from err
        if rank == 0:
            os.rename(partial, final)
            fsync_dir(self.directory)
            write_text(self.directory / LATEST, name)
            self._prune()
        barrier()
        return final

    def load(self, engine, rank: int, world: int, accumulation: int = 1) -> Position | None:
        """Restore the newest complete checkpoint into ``engine``; None when there is none.

        Rank 0 chooses the checkpoint (the newest whose files match their digests) and tells the
        others, so every rank loads the same one even when their views of shared storage differ
        for a moment.
        """
        if rank == 0:
            sound = self.newest_sound()
            chosen, self.damaged = agree((sound.name if sound is not None else None, self.damaged))
        else:
            chosen, self.damaged = agree(None)
        if chosen is None:
            return None
        checkpoint = self.directory / chosen
        written = json.loads((checkpoint / COMPLETE).read_text())
        written_by, written_accumulation = written["world"], written.get("accumulation", 1)
        resharded = written_by != world
        # Every rank is at the same step and place in its stream; a new rank reads rank 0's.
        position_file = checkpoint / f"position-rank{rank if not resharded else 0}.json"
        if not position_file.is_file():
            raise CheckpointError(f"{position_file}: missing (rank {rank} cannot see checkpoint {chosen})")
        if resharded:
            self._check_reshardable(checkpoint, written_by, world, written_accumulation, accumulation)
            load_resharded(engine, checkpoint, written_by)
        else:
            loaded, _ = engine.load_checkpoint(
                str(checkpoint), tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
            )
            if loaded is None:
                raise CheckpointError(f"{checkpoint}: DeepSpeed found no checkpoint to load")
        position = Position(**json.loads(position_file.read_text()))
        if resharded:
            # The same global batches: a step is ``accumulation`` batches of this rank's stream now.
            position.batch_in_epoch = position.batch_in_epoch // written_accumulation * accumulation
        else:
            position.restore_rng()  # per rank; with another world size each rank starts its own
        self.loaded = checkpoint
        self.resharded_from = written_by if resharded else None
        return position

    def newest_sound(self) -> Path | None:
        """The newest complete checkpoint whose files all match their digests. Those that do not are
        set aside (``step-NNNNNN.damaged``) and listed in ``damaged``."""
        for checkpoint in reversed(self._complete()):
            reason = checkpoint_problem(checkpoint)
            if reason is None:
                return checkpoint
            log.warning("%s: damaged (%s); set aside, the checkpoint before it is used", checkpoint, reason)
            set_aside(checkpoint)
            self.damaged.append({"file": str(checkpoint), "reason": reason})
        return None

    def _check_reshardable(self, checkpoint: Path, written_by: int, world: int, written_accumulation: int,
                           accumulation: int) -> None:
        if written_by * written_accumulation != world * accumulation:
            raise CheckpointError(
                f"{checkpoint} was written by {written_by} workers; resuming it on {world} keeps its global batch "
                f"only with train.global_batch set (the batches per step then adapt), or with "
                f"train.workers={written_by}")

    def method_state(self, rank: int, reshard=None) -> dict:
        """This rank's method state in the checkpoint ``load`` restored ({} when it kept none).
        After a resume on another number of workers, every old rank's state is read and
        ``reshard(states)`` gives the new ranks' (the method's ``reshard_state``)."""
        if self.resharded_from is None:
            path = self.loaded / f"method-rank{rank}.pt"
            return torch.load(path, weights_only=True) if path.is_file() else {}
        paths = [self.loaded / f"method-rank{r}.pt" for r in range(self.resharded_from)]
        if not any(p.is_file() for p in paths):
            return {}
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CheckpointError(f"{self.loaded}: method state missing for some workers: {', '.join(missing)}")
        return reshard([torch.load(p, weights_only=True) for p in paths])[rank]

    def clear(self) -> None:
        """Drop the task's checkpoints once its final weights are safely written. Renamed first,
        so a kill halfway through deleting never leaves something that looks like a checkpoint."""
        _remove(self.directory)

    def _complete(self) -> list[Path]:
        return sorted(p.parent for p in self.directory.glob(f"step-*/{COMPLETE}") if _STEP.fullmatch(p.parent.name))

    def _prune(self) -> None:
        for old in self._complete()[: -self.keep]:
            _remove(old)
        for leftover in self.directory.glob("step-*.partial"):
            _remove(leftover)


class JobLock:
    """Held by rank 0 of the worker group training a job, so that a restarted group never works in
    the checkpoint directory while a dying one still does.

    A POSIX record lock (``lockf``), released by the kernel when its holder dies. Not ``flock``:
    a flock belongs to the open file, which the loader processes a worker forks inherit, so one
    such process outliving its killed worker (seen after a node loss) kept the job locked for good.
    A record lock belongs to the process alone."""

    def __init__(self, directory: Path, timeout: float = 300.0):
        self.path = directory.parent / f".{directory.name}.lock"
        self.timeout = timeout
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.lockf(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                if time.monotonic() > deadline:
                    raise CheckpointError(f"{self.path}: still locked after {self.timeout:.0f} s by another "
                                          "worker group training this job") from None
                time.sleep(0.2)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


_STEP = re.compile(r"step-\d{6}")


def save_method_state(directory: str | Path, rank: int, state: dict) -> None:
    """The state a method carries out of a task (replay buffers, importances): one file per rank,
    ``<directory>/rank-<r>.pt`` with its digest, written before the task's weights (which mean "done")."""
    with sealed_path(method_state_file(directory, rank)) as tmp:
        torch.save(state, tmp)


def load_method_state(directory: str | None, rank: int, world: int, reshard=None,
                      written_by: int = 0) -> dict | None:
    """The state a method carried out of the previous task on this rank; None when it kept none.
    ``written_by``: how many ranks wrote it (the previous task's summary says), every file checked
    against its digest. Written by another number of workers, every old rank's state is read and
    ``reshard(states)`` gives the new ranks'."""
    if directory is None or written_by == 0:
        return None
    paths = [method_state_file(directory, r) for r in range(written_by)]
    for path in paths:
        verify(path)
    if written_by == world:
        return torch.load(paths[rank], weights_only=True)
    if reshard is None:
        raise CheckpointError(f"{directory}: the method's state was written by {written_by} workers; continue with "
                              f"train.workers={written_by}")
    log.info("%s: the method's state of %d workers re-sharded for %d", directory, written_by, world)
    return reshard([torch.load(p, weights_only=True) for p in paths])[rank]


def load_resharded(engine, checkpoint: Path, written_by: int) -> None:
    """Load a checkpoint written by ``written_by`` workers into an engine on another number
    (crdist/train/reshard.py)."""
    from crdist.train.reshard import ReshardError, read_full_state, write_full_state

    try:
        write_full_state(engine, read_full_state(checkpoint / ENGINE_TAG))
    except ReshardError as err:
        raise CheckpointError(f"{checkpoint}: {err}") from None


def agree(value):
    """Rank 0's ``value`` on every rank (identity outside a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _remove(path: Path) -> None:
    if not path.exists():
        return
    doomed = path.with_name(f"{path.name}.deleting-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why the complete checkpoint directory ``checkpoint`` cannot be trusted, or None."""
    try:
        files = json.loads((checkpoint / COMPLETE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {COMPLETE} record is unreadable or has no digests"
    for name, record in sorted(files.items()):
        reason = problem(checkpoint / name, Digest.from_dict(record))
        if reason is not None:
            return f"{name}: {reason}"
    return None


def _size(directory: Path | None) -> int:
    if directory is None or not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _fsync_and_digest(root: Path) -> dict[str, dict]:
    """fsync every file under ``root`` (and the folders), and return each file's digest by its path
    relative to ``root``: read once, while it is still in the page cache."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            files[str(path.relative_to(root))] = digest_file(path).to_dict()
        fsync_dir(Path(folder))
    return files
