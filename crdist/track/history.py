"""What each tracker already holds, read back from the run's logs/events.jsonl.

Every driver run writes one ``tracking`` event naming the trackers it feeds (none, too) before it
feeds them. A tracker named there holds every event before that line (the run caught it up first)
and every event after it, until the next driver run's line. What comes later, it never received:
the next run that turns it on catches it up from the file, so a tracker turned on in the middle of
a study still gets its whole history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MARKER_KIND = "tracking"


def marker(trackers: list[str]) -> dict:
    """The event that says which trackers (by config key) this driver run feeds."""
    return {"kind": MARKER_KIND, "trackers": trackers}


@dataclass
class Event:
    number: int  # its line in events.jsonl, from 1; only ever grows, across resumed runs too
    body: dict


@dataclass
class Backlog:
    """One tracker's state: the events it holds, and those a run must still send it, in order."""

    held: list[Event] = field(default_factory=list)
    missing: list[Event] = field(default_factory=list)


def read_events(path: Path) -> tuple[list[Event], int]:
    """The events of ``path`` and the number the next one written will have. A line a killed
    driver left half-written is skipped; its number is not reused."""
    if not path.is_file():
        return [], 1
    events = []
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):  # the last piece has no newline yet
        try:
            events.append(Event(number, json.loads(line)))
        except ValueError:
            continue
    return events, len(lines)


def backlog(events: list[Event], tracker: str) -> Backlog:
    held_until = 0  # events[:held_until] are in the tracker
    feeding = False
    for index, event in enumerate(events):
        if event.body.get("kind") != MARKER_KIND:
            continue
        if tracker in event.body.get("trackers", []):
            feeding = True
        elif feeding:
            held_until, feeding = index, False
    if feeding:
        held_until = len(events)
    return Backlog(events[:held_until], events[held_until:])
