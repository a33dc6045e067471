"""Which files of a run directory are damaged, and what a resume does about each.

The driver asks before it reuses anything an earlier run wrote (``trained_task``, ``evaluation``,
``initial_model``), and ``crdist verify RUN_DIR`` asks of the whole directory (``audit``) without
running anything. What a resume does with a damaged file:

    c_0                               written again (the same seed, the same pretrained weights)
    c_i, its summary or method state  task i trained again from c_{i-1} (training is deterministic:
                                      the same bytes as before the damage); c_i's evaluations wait for it
    an evaluation's result            evaluated again
    a mid-task checkpoint             set aside; the task resumes from the checkpoint before it, or
                                      from c_{i-1} when none is left
    a shard                           nothing: the run stops and names it (``crdist prepare --verify``)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crdist import integrity
from crdist.integrity import DAMAGED, problem
from crdist.rundir import RunDir
from crdist.train.job import TaskResult, summary_path


@dataclass(frozen=True)
class Damage:
    path: Path  # the damaged file (or checkpoint directory)
    reason: str
    job: str  # the journal's name of the job that wrote it, e.g. "train/sgd/2"
    redo: str  # what a resume does about it

    def describe(self, root: Path) -> str:
        return f"{_relative(self.path, root)}: {self.reason}; {self.redo}"


def initial_model(run_dir: RunDir) -> Damage | None:
    path = run_dir.weights(None, 0)
    reason = problem(path)
    return Damage(path, reason, "c_0", "written again from the config") if reason else None


def trained_task(run_dir: RunDir, method: str, row: int) -> Damage | None:
    """c_row of ``method`` with its summary and method state, checked; None when all are sound."""
    weights = run_dir.weights(method, row)
    redo = f"task {row} of {method} trained again from c_{row - 1}"
    for path in (summary_path(weights), weights):
        reason = problem(path)
        if reason:
            return Damage(path, reason, f"train/{method}/{row}", redo)
    ranks = TaskResult.read(weights).state_ranks
    for path in run_dir.method_state_files(method, row, ranks):
        reason = problem(path)
        if reason:
            return Damage(path, f"method state {reason}", f"train/{method}/{row}", redo)
    return None


def evaluation(run_dir: RunDir, method: str | None, row: int, task: int) -> Damage | None:
    path = run_dir.evaluation(method, row, task)
    reason = problem(path)
    label = RunDir.checkpoint_label(method, row)
    return Damage(path, reason, f"eval/{label}/{task}", "evaluated again") if reason else None


def checkpoints(run_dir: RunDir, method: str, task: int) -> list[Damage]:
    """The mid-task checkpoints of one job that fail their digests (a resume sets them aside)."""
    from crdist.train.checkpoint import TaskCheckpoints, checkpoint_problem

    found = []
    complete = TaskCheckpoints(run_dir.checkpoints(method, task))._complete()
    problems = {checkpoint: checkpoint_problem(checkpoint) for checkpoint in complete}
    sound = [c for c in complete if problems[c] is None]
    for checkpoint, reason in problems.items():
        if reason is None:
            continue
        before = [c for c in sound if c.name < checkpoint.name]
        redo = (f"set aside; task {task} resumes from {before[-1].name}" if before
                else f"set aside; task {task} resumes from a newer checkpoint" if sound
                else f"set aside; task {task} trained again from c_{task - 1}")
        found.append(Damage(checkpoint, reason, f"train/{method}/{task}", redo))
    return found


def audit(run_dir: RunDir) -> tuple[list[Damage], int]:
    """Every damaged file of the run directory, and how many files were checked."""
    damaged, checked = [], 0
    root = run_dir.root

    def check(found):
        nonlocal checked
        checked += 1
        if found is not None:
            damaged.append(found)

    if run_dir.weights(None, 0).exists():
        check(initial_model(run_dir))
    models = root / "models"
    methods = sorted(p.name for p in models.iterdir() if p.is_dir()) if models.is_dir() else []
    for method in methods:
        # A task is done when its weights exist; one missing before a done one was lost.
        done = [row for row in _rows(models / method) if run_dir.weights(method, row).is_file()]
        for row in range(1, max(done, default=0) + 1):
            check(trained_task(run_dir, method, row))
    for folder in sorted(p for p in (root / "eval").glob("*") if p.is_dir()):
        method = None if folder.name == "c_0" else folder.name
        for path in sorted(folder.glob("*-*.json")):
            numbers = path.stem.split("-")
            if len(numbers) != 2 or not all(n.isdigit() for n in numbers):
                continue
            row, task = (int(n) for n in numbers)
            check(evaluation(run_dir, method, row, task))
    for task_dir in sorted((root / "checkpoints").glob("*/task-*")):
        if not task_dir.name.removeprefix("task-").isdigit():
            continue  # e.g. task-1.deleting-…: a task's checkpoints being dropped when a kill came
        found = checkpoints(run_dir, task_dir.parent.name, int(task_dir.name.removeprefix("task-")))
        checked += 1
        damaged.extend(found)
    return damaged, checked


def _rows(method_dir: Path) -> list[int]:
    """The tasks of a method with any output on disk: weights, summary, state or a record of one."""
    rows = set()
    for path in method_dir.iterdir():
        if path.name.startswith("c_") and not path.name.endswith(DAMAGED) and not path.name.startswith("."):
            stem = path.name.split(".", 1)[0]
            if stem[2:].isdigit():
                rows.add(int(stem[2:]))
    return sorted(rows)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def as_dict(found: Damage, root: Path) -> dict:
    return {"file": _relative(found.path, root), "reason": found.reason, "redo": found.redo}


def set_aside(found: Damage, root: Path, journal, say, *paths: Path) -> None:
    """A damaged file found by a driver: it (and ``paths``, the rest of what its job wrote) is set
    aside (``<name>.damaged``), said in one line and journaled; its job is then done again."""
    for path in paths or (found.path,):
        integrity.set_aside(path)
    journal.record("damaged", found.job, **as_dict(found, root))
    say(f"damaged {found.describe(root)}")
