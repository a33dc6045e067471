"""The run directory: the unit of a study on disk (config, models, evaluations, logs, report).

    runs/<name>/config.yaml            resolved config the run was started with
                journal.jsonl           every job started, finished or stopped (append-only)
                checkpoints/<method>/task-<i>/   mid-task checkpoints of the job in progress
                models/c_0.safetensors  the initial model, shared by every method
                models/<method>/c_<i>.safetensors
                models/<method>/c_<i>.state/rank-<r>.pt   the method's state after task i, per rank
                eval/c_0/0-<j>.json, eval/<method>/<i>-<j>.json
                logs/driver.log, logs/events.jsonl, logs/train/*.log
                tracking/               the experiment trackers' files (tracking: section)
                ray/                    Ray Train's storage for the train jobs
                report/
                .driver.lock            held by the driver working on the run
"""

from __future__ import annotations

import difflib
import fcntl
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from crdist import config
from crdist.atomic import write_text
from crdist.errors import CrdistError


class RunDirError(CrdistError, RuntimeError):
    pass


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def tracking(self) -> Path:
        return self.root / "tracking"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"

    @property
    def journal(self) -> Path:
        return self.root / "journal.jsonl"

    def checkpoints(self, method: str, task: int) -> Path:
        return self.root / "checkpoints" / method / f"task-{task}"

    def weights(self, method: str | None, row: int) -> Path:
        if row == 0:
            return self.root / "models" / "c_0.safetensors"
        return self.root / "models" / method / f"c_{row}.safetensors"

    def method_state(self, method: str, row: int) -> Path:
        """A method's state after task ``row`` (replay buffers, importances), one file per rank,
        written before the weights c_row; what the job of task row+1 starts from."""
        return self.root / "models" / method / f"c_{row}.state"

    def evaluation(self, method: str | None, row: int, task: int) -> Path:
        folder = "c_0" if row == 0 else method
        return self.root / "eval" / folder / f"{row}-{task}.json"

    @staticmethod
    def checkpoint_label(method: str | None, row: int) -> str:
        return "c_0" if row == 0 else f"{method}/c_{row}"

    @contextmanager
    def driven(self) -> Iterator[None]:
        """Hold the run for one driver. Two drivers on one run directory (a scheduler that
        restarts a job while the old one still runs, a command typed twice) would both write its
        files. The kernel drops the lock when its process dies, however it dies, so a killed
        driver never leaves the run locked. (On network filesystems flock may be advisory only.)"""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".driver.lock"
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunDirError(
                    f"{self.root} is in use by another crdist driver ({holder}); "
                    f"wait for it to finish or stop it, then run the same command again"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def open(self, study) -> bool:
        """Create the run directory, or accept an existing one whose config gives the same results.

        Returns True when the directory already existed (finished jobs are then reused).
        """
        # Through the loader once, as the saved config is below: a float field given as an int
        # (256 for 256.0) must not read as a change.
        wanted = config.to_dict(config.from_dict(type(study), config.to_dict(study)))
        if self.config_file.is_file():
            existing = yaml.safe_load(self.config_file.read_text())
            try:  # keys added to crdist since the run began take their defaults, as the run had them
                existing = config.to_dict(config.from_dict(type(study), existing, source=str(self.config_file)))
            except config.ConfigError:
                pass  # a key this version no longer knows: compare the configs as written
            before, after = _results_part(existing), _results_part(wanted)
            if before != after:
                lines = difflib.unified_diff(before.splitlines(True), after.splitlines(True), "existing", "new")
                raise RunDirError(
                    f"{self.root} was started with a different config; refusing to mix results. "
                    f"Use another --name, or delete the directory to start over. Differences:\n"
                    + "".join(list(lines)[2:40])
                )
            return True
        for folder in (self.logs, self.report, self.root / "models", self.root / "eval"):
            folder.mkdir(parents=True, exist_ok=True)
        write_text(self.config_file, yaml.safe_dump(wanted, sort_keys=False))
        return False


# Settings that change where and how a run executes but not its results: a rerun may change them.
_EXECUTION_ONLY = (
    ("cluster",),
    ("runs_dir",),
    ("checkpoint",),  # training is deterministic: where it checkpoints never changes the result
    ("data", "stream_url"),  # where the same shards are read from
    ("train", "log_every"),
    ("train", "max_failures"),
    ("train", "max_preemption_failures"),
    ("train", "placement"),
    ("train", "decoded_cache_mb"),  # cached or decoded again, the same pixels
    ("evaluate", "concurrent"),
    ("tracking",),  # where progress is reported, not what is computed
    ("pretrain", "dir"),  # where the pretrained start is kept; its fingerprint says what it is
)


def _results_part(study: dict) -> str:
    from crdist.study import method_sections

    trimmed = {k: dict(v) if isinstance(v, dict) else v for k, v in study.items()}
    for name in method_sections():  # the options of a method the study does not run change nothing
        if name not in study.get("train", {}).get("methods", []):
            trimmed.pop(name, None)
    if not trimmed.get("pretrain", {}).get("steps"):  # no pretrain stage: its other settings change nothing
        trimmed.pop("pretrain", None)
    # (two levels deep is enough for every key listed above)
    for path in _EXECUTION_ONLY:
        node = trimmed
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    if trimmed.get("train", {}).get("global_batch") is not None:
        # A fixed global batch is accumulated on any number of workers: the worker count is where
        # the run executes (a preempted run may come back on fewer), not what it computes.
        trimmed["train"].pop("workers", None)
    return yaml.safe_dump(trimmed, sort_keys=False)
