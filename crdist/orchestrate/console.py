"""What the driver tells the user: timestamped lines on the terminal, copied to logs/driver.log,
and every progress event as a JSON line in logs/events.jsonl."""

from __future__ import annotations

import json
import time
from pathlib import Path


class Console:
    def __init__(self, log_dir: Path):
        self.started = time.monotonic()
        self.log = open(log_dir / "driver.log", "a")
        self.events = open(log_dir / "events.jsonl", "a")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def print(self, message: str = "") -> None:
        for line in message.splitlines() or [""]:
            stamped = f"[{self.elapsed():5.0f}s] {line}"
            print(stamped, flush=True)
            self._log(stamped)

    def plain(self, text: str) -> None:
        """An unstamped block (a table)."""
        print(text, flush=True)
        self._log(text)

    def log_only(self, message: str) -> None:
        """Into driver.log but not the terminal (e.g. the final error, which the CLI prints)."""
        self._log(f"[{self.elapsed():5.0f}s] {message}")

    def record(self, event: dict) -> None:
        self.events.write(json.dumps({"t": round(self.elapsed(), 3), **event}) + "\n")
        self.events.flush()

    def close(self) -> None:
        self.log.close()
        self.events.close()

    def _log(self, text: str) -> None:
        self.log.write(text + "\n")
        self.log.flush()
