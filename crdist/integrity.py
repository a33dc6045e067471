"""Digests of the files crdist writes and reads back, so that nothing is read back unverified.

A file that a failing disk flipped a bit in, that a full disk or a half-synced network filesystem
cut short, or that someone copied in from another run loads without complaint (a safetensors file
with a flipped mantissa bit is a valid safetensors file) and would train or score garbage. So every
such file gets a digest when it is written, and is checked against it before it is used:

    models/sgd/c_1.safetensors
    models/sgd/c_1.safetensors.xxh3       {"xxh3_128": "…", "bytes": 123456}

The record is written *before* the file is renamed into place (``sealed_path``): whenever the file
exists under its name, its record does too. A record without its file is harmless (the file is
simply missing); a file without its record was not written by this crdist, or its record was lost,
and is not trusted either. A mid-task checkpoint, a directory, keeps the same records for all of its
files in its ``COMPLETE`` marker (crdist/train/checkpoint.py), which is renamed into place with it.

The hash is XXH3-128 (the ``xxhash`` package): about 6 GiB/s on one core here, against 1.1 GiB/s for
sha256 with the CPU's SHA instructions, and the damage it is for is accidental, not an attacker
(who could rewrite the record as easily). Prepared shards keep the sha256 their manifests have
always had (crdist/data/shards.py).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import xxhash

from crdist.atomic import atomic_path, write_text
from crdist.errors import CrdistError

ALGORITHM = "xxh3_128"
SUFFIX = ".xxh3"
DAMAGED = ".damaged"  # a file that failed is renamed aside with this suffix, kept for inspection
_CHUNK = 4 << 20


class DamagedFile(CrdistError, RuntimeError):
    """A file crdist wrote does not match its digest (or has none): it must not be used."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


@dataclass(frozen=True)
class Digest:
    value: str  # hex
    bytes: int

    def to_dict(self) -> dict:
        return {ALGORITHM: self.value, "bytes": self.bytes}

    @staticmethod
    def from_dict(record: dict) -> "Digest":
        return Digest(record[ALGORITHM], int(record["bytes"]))


def digest_file(path: str | Path) -> Digest:
    h = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
            size += len(block)
    return Digest(h.hexdigest(), size)


def record_path(path: str | Path) -> Path:
    """Where ``path``'s digest is kept: ``<path>.xxh3``."""
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


@contextmanager
def sealed_path(path: Path) -> Iterator[Path]:
    """Like ``atomic_path`` (write the yielded temporary path; it is renamed onto ``path``), and the
    file's digest is recorded before the rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        yield tmp
        write_text(record_path(path), json.dumps(digest_file(tmp).to_dict()))


def write_sealed_json(path: Path, data) -> None:
    with sealed_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def problem(path: str | Path, expected: Digest | None = None) -> str | None:
    """Why ``path`` cannot be trusted, or None when it matches its digest. ``expected``: the digest
    recorded elsewhere (a checkpoint's COMPLETE); by default, the one beside the file."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if expected is None:
        record = record_path(path)
        if not record.is_file():
            return f"no digest recorded ({record.name} is missing)"
        try:
            expected = Digest.from_dict(json.loads(record.read_text()))
        except (ValueError, KeyError, TypeError):
            return f"its digest record {record.name} is unreadable"
    size = path.stat().st_size
    if size != expected.bytes:
        return f"{size:,} bytes where {expected.bytes:,} were written (truncated or overwritten)"
    if digest_file(path).value != expected.value:
        return "its content differs from the digest recorded when it was written"
    return None


def verify(path: str | Path, expected: Digest | None = None) -> None:
    """Raise ``DamagedFile`` unless ``path`` matches its digest."""
    reason = problem(path, expected)
    if reason is not None:
        raise DamagedFile(Path(path), reason)


def set_aside(path: str | Path) -> Path | None:
    """Rename a damaged file or directory out of the way, ``<name>.damaged`` (replacing an older one
    there), so that nothing takes it for a good one and a person can still look at it; its record
    goes. Returns where it went (None if it was already gone)."""
    path = Path(path)
    if not path.exists():
        record_path(path).unlink(missing_ok=True)
        return None
    aside = path.with_name(path.name + DAMAGED)
    if aside.is_dir():
        shutil.rmtree(aside)
    os.replace(path, aside)
    record_path(path).unlink(missing_ok=True)
    return aside
