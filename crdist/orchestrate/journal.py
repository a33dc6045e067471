"""The run's journal: an append-only record of every job it started, finished or stopped.

``journal.jsonl`` holds one JSON object a line, each flushed and fsynced as it is written, so a
killed driver loses at most the line it was writing (a torn last line is ignored on reading, and
the next line written starts a line of its own). A rerun reads it to see which jobs are finished
and appends to it. A disk too full to append to stops the driver with a ``DiskFull`` that says so.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from crdist.atomic import disk_full, ends_a_line, is_no_room


class Journal:
    def __init__(self, path: Path):
        self.path = path
        # A torn last line (a killed driver's, or one a full disk cut short) is ended before the
        # next entry, so that entry is a line of its own.
        self.torn = path.is_file() and path.stat().st_size > 0 and not ends_a_line(path)

    def record(self, event: str, job: str | None = None, **fields) -> None:
        entry = {"time": round(time.time(), 3), "event": event, **({"job": job} if job else {}), **fields}
        line = (json.dumps(entry) + "\n").encode()
        try:
            with open(self.path, "ab") as f:
                f.write(b"\n" + line if self.torn else line)
                f.flush()
                os.fsync(f.fileno())
            self.torn = False
        except OSError as err:
            self.torn = True  # part of the line may be written
            if is_no_room(err):
                raise disk_full(self.path.parent, f"its journal ({self.path.name})", len(line)) from err
            raise

    def record_run_start(self, resumed: bool) -> None:
        self.record("run", pid=os.getpid(), host=socket.gethostname(), resumed=resumed)

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the line a killed driver was writing
        return entries

    def finished(self) -> set[str]:
        return {e["job"] for e in self.entries() if e["event"] == "finished"}
