"""The raw files a preparation was made from, so that reusing its shards notices when they change.

``raw-files.json`` beside the manifest lists every raw file (index files such as pickles, CSVs
and metadata, and every image file) with its size and modification time, relative to
``data.root``. Reuse re-reads only these stat fields: cheap next to a preparation, and enough to
notice an edited CSV or a replaced image. A copy of the raw data that did not keep modification
times (``cp`` without ``-p``) reads as changed too; prepare again then, or copy with ``-p``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from crdist.atomic import write_text

FILENAME = "raw-files.json"


def _base(root: Path) -> Path:
    root = Path(root).expanduser().resolve()
    return root if root.is_dir() else root.parent  # the csv benchmark's root is the CSV file


def write_raw_files(directory: Path, root: Path, files: list[Path]) -> None:
    base = _base(root)
    entries = []
    for path in files:
        stat = Path(path).stat()
        entries.append([os.path.relpath(Path(path).resolve(), base), stat.st_size, stat.st_mtime_ns])
    write_text(directory / FILENAME, json.dumps({"files": entries}, separators=(",", ":")))


def changed_raw_files(directory: Path, root: Path) -> list[str] | None:
    """What changed among the raw files since ``directory`` was prepared from them, one line each;
    None when the preparation kept no record (made from bundled data, or by an older crdist)."""
    record = Path(directory) / FILENAME
    if not record.is_file():
        return None
    base = _base(root)
    changed = []
    for relative, size, mtime_ns in json.loads(record.read_text())["files"]:
        path = base / relative
        try:
            stat = path.stat()
        except OSError:
            changed.append(f"{path}: missing")
            continue
        if stat.st_size != size:
            changed.append(f"{path}: {stat.st_size} bytes, {size} when prepared")
        elif stat.st_mtime_ns != mtime_ns:
            changed.append(f"{path}: modified since it was prepared")
    return changed
