"""What the driver tells the user: timestamped lines on the terminal, copied to logs/driver.log,
and every progress event as a JSON line in logs/events.jsonl, then to whoever follows the events
(the experiment trackers)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable


class Console:
    def __init__(self, log_dir: Path):
        self.started = time.monotonic()
        self.log = open(log_dir / "driver.log", "a")
        self.events = open(log_dir / "events.jsonl", "a")
        if self.events.tell() and not _ends_a_line(log_dir / "events.jsonl"):
            self.events.write("\n")  # a killed driver's half line: the next event starts its own
            self.events.flush()
        self.followers: list[Callable[[dict], None]] = []

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
        event = {"t": round(self.elapsed(), 3), **event}
        self.events.write(json.dumps(event) + "\n")
        self.events.flush()  # the file first: it is the record that followers are rebuilt from
        for follow in self.followers:
            follow(event)

    def follow(self, callback: Callable[[dict], None]) -> None:
        """Hand every event recorded from now on to ``callback``, after writing it."""
        self.followers.append(callback)

    def close(self) -> None:
        self.log.close()
        self.events.close()

    def _log(self, text: str) -> None:
        self.log.write(text + "\n")
        self.log.flush()


def _ends_a_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"
