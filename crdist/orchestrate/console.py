"""What the driver tells the user: timestamped lines on the terminal, copied to logs/driver.log,
and every progress event as a JSON line in logs/events.jsonl, then to whoever follows the events
(the experiment trackers).

A disk too full to take a line does not stop the driver (the study stops on its own once a job
cannot write its checkpoint, with an error that names the directory): the lines not written wait
in memory and go out, in order, with the next line once there is room again."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from crdist.atomic import ends_a_line, is_no_room


class Console:
    def __init__(self, log_dir: Path):
        self.started = time.monotonic()
        self.log = _AppendOnly(log_dir / "driver.log", self._no_room)
        self.events = _AppendOnly(log_dir / "events.jsonl", self._no_room)
        self.followers: list[Callable[[dict], None]] = []
        self._warned = False

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
        self.events.append(json.dumps(event) + "\n")  # the file first: followers are rebuilt from it
        for follow in self.followers:
            follow(event)

    def follow(self, callback: Callable[[dict], None]) -> None:
        """Hand every event recorded from now on to ``callback``, after writing it."""
        self.followers.append(callback)

    def close(self) -> None:
        for file in (self.log, self.events):
            if file.close():
                print(f"warn   {file.path}: {file.close_unwritten} byte(s) of it never found room on the disk",
                      file=sys.stderr, flush=True)

    def _log(self, text: str) -> None:
        self.log.append(text + "\n")

    def _no_room(self, path: Path, err: OSError) -> None:
        if not self._warned:
            self._warned = True
            print(f"warn   no room to write {path} ({err.strerror}); the driver keeps its log lines and events in "
                  "memory and writes them once there is room", file=sys.stderr, flush=True)


class _AppendOnly:
    """A file appended to line by line with one write call each (no buffer of Python's that a
    failed flush would leave in an unknown state); what a full disk refused waits for the next
    append."""

    def __init__(self, path: Path, no_room: Callable[[Path, OSError], None]):
        self.path = path
        self.file = open(path, "ab", buffering=0)
        self.unwritten = b""
        self.close_unwritten = 0
        self.no_room = no_room
        if self.file.tell() and not ends_a_line(path):
            self.append("\n")  # a killed driver's half line: the next one starts its own

    def append(self, text: str) -> None:
        pending = self.unwritten + text.encode()
        try:
            while pending:
                pending = pending[self.file.write(pending):]
        except OSError as err:
            if not is_no_room(err):
                raise
            self.no_room(self.path, err)
        self.unwritten = pending

    def close(self) -> bool:
        """Close; whether some bytes never found room (``close_unwritten`` of them)."""
        if self.unwritten:
            self.append("")
        self.close_unwritten = len(self.unwritten)
        self.file.close()
        return bool(self.close_unwritten)
