"""Atomic file writes: write a temporary sibling, fsync, rename. A reader (or a crash) sees the old
file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from crdist.errors import CrdistError

# A write that fails for want of room: the disk is full, a quota is spent, or a file-size limit hit.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFull(CrdistError, OSError):
    """A write failed for want of room; what was written before it is intact. Built as an OSError,
    ``DiskFull(errno.ENOSPC, message)``, so that it pickles across Ray."""

    def __str__(self) -> str:
        return self.strerror


def ends_a_line(path: Path) -> bool:
    """Whether the non-empty file ``path`` ends with a newline (not with a torn last line)."""
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def is_no_room(err: BaseException) -> bool:
    """Whether ``err`` is a write refused for want of room (its errno says so)."""
    return getattr(err, "errno", None) in _NO_ROOM


def out_of_room(err: BaseException, directory: Path, needed: int) -> bool:
    """Whether ``err`` (raised while writing about ``needed`` bytes into ``directory``) is a disk
    that is full. Python's own writes carry the errno; torch's and safetensors' writers raise their
    own errors without it, so the free space is asked too."""
    seen = err
    while seen is not None:
        if getattr(seen, "errno", None) in _NO_ROOM:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(directory).free < needed
    except OSError:
        return False


def disk_full(directory: Path, what: str, needed: int) -> DiskFull:
    """The error for a write of ``what`` into ``directory`` that ran out of room."""
    try:
        free = f"{shutil.disk_usage(directory).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFull(errno.ENOSPC, f"{directory}: no room to write {what} (it needs about {needed / 2**20:.1f} MiB; "
                    f"{free}). Everything written before it is intact: make room there and run the same command "
                    "again to continue")


@contextmanager
def room_for(directory: Path, what: str, needed: int) -> Iterator[None]:
    """Turns a write inside the block that fails for want of room into a ``DiskFull`` that says so."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if not out_of_room(err, directory, needed):
            raise
        raise disk_full(directory, what, needed) from err


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it is fsynced and renamed onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a crash of the machine
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=1))
