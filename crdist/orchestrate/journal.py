"""The run's journal: an append-only record of every job it started, finished or stopped.

``journal.jsonl`` holds one JSON object a line, each flushed and fsynced as it is written, so a
killed driver loses at most the line it was writing (a torn last line is ignored on reading).
A rerun reads it to see which jobs are finished and appends to it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


class Journal:
    def __init__(self, path: Path):
        self.path = path

    def record(self, event: str, job: str | None = None, **fields) -> None:
        entry = {"time": round(time.time(), 3), "event": event, **({"job": job} if job else {}), **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

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
