"""The fan-out from the driver to its trackers: each event, mapped to scalars, goes to every
tracker turned on, in the driver process only.

No tracker gets a (tag, step) twice, also across resumed runs: each keeps the steps it holds per
tag, learnt from events.jsonl when the run begins (see ``history``), and takes only steps it lacks. A resumed train job repeats the steps after its checkpoint that a killed run may have logged;
those are skipped. A tracker that fails while the study runs is turned off for the rest of the run
with one warning; the study goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from crdist.errors import CrdistError
from crdist.rundir import RunDir
from crdist.track.config import TrackingConfig
from crdist.track.history import Event, backlog, marker, read_events
from crdist.track.scalars import Plan, Scalar, scalars_of


class TrackingError(CrdistError, RuntimeError):
    """A tracker cannot start (its package is missing)."""


class Tracker(Protocol):
    key: str  # its key in the tracking: section
    label: str  # its name in messages

    def log(self, scalars: list[Scalar], number: int) -> None: ...

    def publish(self, report_dir: Path, step: int) -> None: ...

    def close(self, outcome: str) -> None: ...


class _Feed:
    """One tracker and the steps it holds per tag."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.held: dict[str, set[int]] = {}

    def fresh(self, scalars: list[Scalar]) -> list[Scalar]:
        """The scalars it does not hold yet, now counted as held. Steps, not the highest step: two
        evaluations of one task may finish out of order (c_2's before c_1's), and both belong."""
        new = []
        for scalar in scalars:
            steps = self.held.setdefault(scalar.tag, set())
            if scalar.step not in steps:
                steps.add(scalar.step)
                new.append(scalar)
        return new


class Tracking:
    def __init__(self, trackers: list[Tracker], report_dir: Path, warn: Callable[[str], None]):
        self.feeds = [_Feed(t) for t in trackers]
        self.report_dir = report_dir
        self.warn = warn
        self.plan: Plan | None = None
        self.next_number = 1

    @classmethod
    def open(cls, config: TrackingConfig, run_name: str, run_dir: RunDir, warn: Callable[[str], None]) -> "Tracking | None":
        """The trackers ``config`` turns on, opened; None when it turns none on. Raises
        TrackingError when one's package is missing; one that fails otherwise is left out, with a
        warning."""
        if not config.enabled():
            return None
        trackers = []
        try:
            for key in config.enabled():
                tracker = _open_one(key, config, run_name, run_dir, warn)
                if tracker is not None:
                    trackers.append(tracker)
        except BaseException:
            for tracker in trackers:
                tracker.close("failed")
            raise
        return cls(trackers, run_dir.report, warn)

    def describe(self, directory: Path) -> str:
        """Each tracker and where its records go: its own ``where`` (a server's run page), else the
        run's tracking directory."""
        return "; ".join(f"{f.tracker.label} → {getattr(f.tracker, 'where', None) or directory}" for f in self.feeds)

    def keys(self) -> list[str]:
        return [feed.tracker.key for feed in self.feeds]

    def labels(self) -> list[str]:
        return [feed.tracker.label for feed in self.feeds]

    def begin(self, plan: Plan, events_file: Path, write: Callable[[dict], None]) -> None:
        """Learn what each tracker holds from ``events_file``, note in it (through ``write``) that
        this run feeds them, and send each the events it missed."""
        self.plan = plan
        events, self.next_number = read_events(events_file)
        missing = {}
        for feed in self.feeds:
            held = backlog(events, feed.tracker.key)
            for event in held.held:
                feed.fresh(scalars_of(event.body, plan))
            missing[feed] = held.missing
        # Noted before the catching up: a run killed in the middle of it then leaves steps
        # unlogged, never logged twice.
        write(marker(self.keys()))
        self.next_number += 1
        for feed, events in missing.items():
            for event in events:
                if feed in self.feeds:
                    self._send(feed, event)

    def record(self, event: dict) -> None:
        """Send ``event``, just written to events.jsonl as its next line, to every tracker."""
        number, self.next_number = self.next_number, self.next_number + 1
        for feed in list(self.feeds):
            self._send(feed, Event(number, event))

    def close(self, outcome: str) -> None:
        """``outcome``: "finished", "stopped" or "failed", what the trackers record of the run."""
        feeds, self.feeds = self.feeds, []
        for feed in feeds:
            try:
                feed.tracker.close(outcome)
            except Exception as err:  # closing: the study's own outcome (or error) matters more
                self.warn(f"warn   {feed.tracker.label} failed while closing ({type(err).__name__}: {err})")

    def _send(self, feed: _Feed, event: Event) -> None:
        scalars = feed.fresh(scalars_of(event.body, self.plan))
        if not scalars:
            return
        logged = self._call(feed, "logging", lambda: feed.tracker.log(scalars, event.number))
        if logged and event.body.get("kind") == "report":  # new report scalars: a new report to publish
            self._call(feed, "publishing the report", lambda: feed.tracker.publish(self.report_dir, scalars[0].step))

    def _call(self, feed: _Feed, doing: str, action: Callable[[], None]) -> bool:
        """Run ``action``; if it fails, turn the tracker off with one warning."""
        try:
            action()
            return True
        except CrdistError:  # a stop asked for by a signal, not the tracker's failure
            raise
        except Exception as err:
            self.feeds.remove(feed)
            self.warn(f"warn   {feed.tracker.label} failed while {doing} ({type(err).__name__}: {err}); "
                      f"it is off for the rest of this run, the study goes on")
            try:
                feed.tracker.close("failed")
            except Exception:
                pass  # it has failed once already; one warning is enough
            return False


def _open_one(key: str, config: TrackingConfig, run_name: str, run_dir: RunDir, warn) -> Tracker | None:
    directory = run_dir.tracking
    try:
        if key == "tensorboard":
            from crdist.track.tensorboard import TensorBoardTracker

            return TensorBoardTracker(directory / "tensorboard")
        if key == "mlflow":
            from crdist.track.mlflow import MLflowTracker

            uri = config.mlflow_uri or (directory / "mlflow").resolve().as_uri()
            return MLflowTracker(uri, config.mlflow_experiment, run_name, run_dir.root)
        from crdist.track.wandb import WandbTracker

        return WandbTracker(directory, config.wandb_project, run_name, run_dir.root)
    except ImportError as err:
        raise TrackingError(
            f"tracking.{key} is on, but {key} cannot be imported ({err}); "
            f"install the trackers with: pip install 'crdist[tracking]'"
        ) from None
    except CrdistError:
        raise
    except Exception as err:  # a tracker that cannot start must not stop the study
        warn(f"warn   tracking.{key}: could not start ({type(err).__name__}: {err}); the study goes on without it")
        return None
