"""A driver's claim on a run directory: one driver at a time (``hold``), and only with a config that
gives the same results as the one the run began with (``admit``)."""

from __future__ import annotations

import difflib
import fcntl
import os
import socket
import time
from contextlib import contextmanager
from typing import Iterator

import yaml

from crdist import config
from crdist.atomic import write_text
from crdist.rundir import RunDir, RunDirError


@contextmanager
def hold(run_dir: RunDir) -> Iterator[None]:
    """Hold the run for one driver. Two drivers on one run directory (a scheduler that
    restarts a job while the old one still runs, a command typed twice) would both write its
    files. The kernel drops the lock when its process dies, however it dies, so a killed
    driver never leaves the run locked. (On network filesystems flock may be advisory only.)"""
    run_dir.root.mkdir(parents=True, exist_ok=True)
    path = run_dir.root / ".driver.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirError(
                f"{run_dir.root} is in use by another crdist driver ({holder}); "
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


def admit(run_dir: RunDir, study) -> bool:
    """Create the run directory, or accept an existing one whose config gives the same results.

    Returns True when the directory already existed (finished jobs are then reused).
    """
    # Through the loader once, as the saved config is below: a float field given as an int
    # (256 for 256.0) must not read as a change.
    wanted = config.to_dict(config.from_dict(type(study), config.to_dict(study)))
    if run_dir.config_file.is_file():
        existing = yaml.safe_load(run_dir.config_file.read_text())
        try:  # keys added to crdist since the run began take their defaults, as the run had them
            existing = config.to_dict(config.from_dict(type(study), existing, source=str(run_dir.config_file)))
        except config.ConfigError:
            pass  # a key this version no longer knows: compare the configs as written
        before, after = _results_part(existing), _results_part(wanted)
        if before != after:
            lines = difflib.unified_diff(before.splitlines(True), after.splitlines(True), "existing", "new")
            raise RunDirError(
                f"{run_dir.root} was started with a different config; refusing to mix results. "
                f"Use another --name, or delete the directory to start over. Differences:\n"
                + "".join(list(lines)[2:40])
            )
        return True
    for folder in (run_dir.logs, run_dir.report, run_dir.root / "models", run_dir.root / "eval"):
        folder.mkdir(parents=True, exist_ok=True)
    write_text(run_dir.config_file, yaml.safe_dump(wanted, sort_keys=False))
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
