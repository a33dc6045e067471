"""What the driver tells the user: timestamped lines on the terminal, copied to logs/driver.log."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class Console:
    def __init__(self, log_dir: Path | None = None, stream=None):
        self.started = time.monotonic()
        self.stream = stream or sys.stdout
        self.log = open(log_dir / "driver.log", "a") if log_dir else None
        self.events = open(log_dir / "events.jsonl", "a") if log_dir else None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def print(self, message: str = "") -> None:
        for line in message.splitlines() or [""]:
            stamped = f"[{self.elapsed():5.0f}s] {line}"
            print(stamped, file=self.stream, flush=True)
            if self.log:
                self.log.write(stamped + "\n")
                self.log.flush()

    def plain(self, text: str) -> None:
        """Unstamped block (tables)."""
        print(text, file=self.stream, flush=True)
        if self.log:
            self.log.write(text + "\n")
            self.log.flush()

    def record(self, event: dict) -> None:
        if self.events:
            self.events.write(json.dumps({"t": round(self.elapsed(), 3), **event}) + "\n")
            self.events.flush()

    def close(self) -> None:
        for f in (self.log, self.events):
            if f:
                f.close()
