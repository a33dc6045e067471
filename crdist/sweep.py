"""A sweep: a grid of ordinary runs (one study config each) under one parent directory, run on one
Ray cluster with at most ``concurrent`` runs at a time, resumed by name, and aggregated.

A sweep file (YAML)::

    name: fashion-seeds
    base: ../configs/paper/seq_fashion_mnist_cpu.yaml   # relative to the sweep file
    set: [train.max_steps=20]                            # applied to every point (optional)
    axes:                                                # the grid is the product of these
      seed: [0, 1, 2]
      model.backbone: [small-cnn, resnet18-cifar]
    concurrent: 1
    compare_to: sgd                                      # the paired comparisons' reference (optional)

Each axis is a config key, as ``--set`` takes it; a single value for a list key (``train.methods:
[sgd, lpft]``) means a one-element list, so that axis runs one method per point. Every point is
checked before anything starts. Point ``seed=1, model.backbone=small-cnn`` runs as
``crdist run BASE --name seed-1_backbone-small-cnn --set runs_dir=<runs_dir>/<sweep name> …``, a
driver process of its own joining the sweep's cluster. Rerunning the sweep skips the points that
finished and resumes the others exactly (each driver resumes its run directory); a point that
failed is reported as failed, with its error, and retried on the next invocation.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crdist import config
from crdist.atomic import write_json, write_text
from crdist.config import ConfigError, require
from crdist.errors import CrdistError
from crdist.report.aggregate import aggregate, read_run, value_label
from crdist.report.sweep_report import write_sweep_report
from crdist.study import StudyConfig, load_study

STATUS = "sweep-status.json"
SWEEP_FILE = "sweep.yaml"


class SweepError(CrdistError, RuntimeError):
    pass


class SweepStopped(CrdistError, RuntimeError):
    signal_name = "SIGTERM"


@dataclass(frozen=True)
class SweepConfig:
    name: str
    """The sweep's name: its directory under runs_dir."""
    base: str
    """The study config every point starts from; relative paths are relative to the sweep file."""
    axes: dict[str, list[Any]] = field(default_factory=dict)
    """Config key → its values; the grid is their product."""
    set: list[str] = field(default_factory=list)
    """--set overrides applied to every point."""
    concurrent: int = 1
    """Runs at once on the sweep's cluster."""
    runs_dir: str = "runs"
    """The sweep's parent directory is runs_dir/name."""
    compare_to: str | None = None
    """The reference of the paired comparisons; null: the study's first method."""

    def validate(self) -> None:
        require(bool(self.name) and "/" not in self.name, "name", f"must be a plain name (got {self.name!r})")
        require(self.concurrent >= 1, "concurrent", f"must be at least 1 (got {self.concurrent})")
        for key, values in self.axes.items():
            require(len(values) >= 1, f"axes.{key}", "must list at least one value")
            require(len({json.dumps(v) for v in values}) == len(values), f"axes.{key}", "lists a value twice")
        for key in ("name", "runs_dir"):
            require(key not in self.axes, f"axes.{key}", "cannot be an axis (every point has its own)")


@dataclass(frozen=True)
class Point:
    name: str  # its run's name, from its axis values
    values: dict  # axis → value
    overrides: list[str]  # the --set items that make it
    methods: list[str] = field(default_factory=list)  # its train.methods

    def directory(self, parent: Path) -> Path:
        return parent / self.name


def load_sweep(path: Path, overrides: typing.Sequence[str] = ()) -> tuple[SweepConfig, Path, list[Point]]:
    """The sweep, its base config's path, and its points, each checked as a study config.
    ``overrides`` (``crdist sweep --set``) are added to the sweep's ``set:``, after it."""
    sweep = config.load(SweepConfig, path)
    sweep = dataclasses.replace(sweep, set=[*sweep.set, *overrides])
    base = (path.parent / sweep.base) if not Path(sweep.base).is_absolute() else Path(sweep.base)
    if not base.is_file():
        raise ConfigError(f"{path}: base: {sweep.base}: no such config file (looked at {base})")
    points = []
    for combo in itertools.product(*sweep.axes.values()):
        values = dict(zip(sweep.axes, combo))
        overrides = [*sweep.set, *(f"{k}={json.dumps(_as_field(k, v))}" for k, v in values.items())]
        try:
            study = load_study(base, overrides)  # a bad key or value is named before anything runs
        except ConfigError as err:
            raise ConfigError(f"{path}: point {_name(values) or '(the base)'}: {err}") from None
        points.append(Point(_name(values) or sweep.name, values, overrides, list(study.train.methods)))
    methods = list(dict.fromkeys(m for p in points for m in p.methods))
    if sweep.compare_to is not None and sweep.compare_to not in methods:
        raise ConfigError(f"{path}: compare_to: must be one of the sweep's methods, {', '.join(methods)} "
                          f"(got {sweep.compare_to!r})")
    return sweep, base, points


def reference_method(sweep: SweepConfig, points: list[Point]) -> str:
    """The method the others are compared to: ``compare_to``, else the study's first method (the
    first of the base config's train.methods, or of a train.methods axis's first value)."""
    return sweep.compare_to or points[0].methods[0]


def run_sweep(path: Path, address: str | None = None, say=print, overrides: typing.Sequence[str] = ()) -> int:
    """Run every point not finished yet; returns 0 when all finished, 1 when some failed.
    ``overrides`` apply to every point, like the sweep file's ``set:`` (machine-specific paths)."""
    sweep, base, points = load_sweep(path, overrides)
    parent = Path(sweep.runs_dir) / sweep.name
    parent.mkdir(parents=True, exist_ok=True)
    # The copy names its base by absolute path: a relative one meant "beside the original". It
    # holds the command line's --set too, so that a report or rerun sees the points as they ran.
    saved = yaml.safe_load(path.read_text())
    saved["base"] = str(base.resolve())
    saved["set"] = list(sweep.set)
    write_text(parent / SWEEP_FILE, yaml.safe_dump(saved, sort_keys=False, allow_unicode=True))
    status = _read_status(parent)
    say(f"sweep  {sweep.name}: {len(points)} run(s) of {base} over {', '.join(sweep.axes) or 'no axis'}; "
        f"{sweep.concurrent} at a time → {parent}")
    todo = [p for p in points if not _finished(p, parent, status)]
    for p in points:
        if p not in todo:
            say(f"sweep  {p.name}: finished earlier, kept")
    if todo:
        with _cluster(sweep, base, points, address, parent, say) as joined:
            _run_points(todo, base, parent, joined, sweep.concurrent, status, say)
    return report_sweep(parent, say)


def report_sweep(parent: Path, say=print) -> int:
    """(Re)build the sweep's aggregate report from its run directories; 1 if a run failed."""
    sweep, _, points = load_sweep(parent / SWEEP_FILE) if (parent / SWEEP_FILE).is_file() else (None, None, None)
    if sweep is None:
        raise SweepError(f"{parent}: not a sweep directory (it has no {SWEEP_FILE})")
    status = _read_status(parent)
    results = [read_run(p.name, p.values, p.directory(parent), status.get(p.name, {}).get("error")) for p in points]
    agg = aggregate(results, list(sweep.axes))
    if not agg.finished:
        say(f"sweep  no run finished yet; nothing to aggregate ({len(agg.failed)} failed)")
        for r in agg.failed:
            say(f"failed {r.name}: {r.error}")
        return 1
    text = write_sweep_report(agg, parent / "report", sweep.name, results, reference_method(sweep, points))
    say(f"report written to {parent / 'report'}\n\n{text}")
    for r in agg.failed:
        say(f"\nfailed {r.name} (not in the means): {r.error}")
    if agg.pending:
        say(f"\nnot finished: {', '.join(agg.pending)}")
    return 1 if agg.failed else 0


def _run_points(todo: list[Point], base: Path, parent: Path, address: str, concurrent: int, status: dict,
                say, start=None) -> None:
    """Run ``todo``, ``concurrent`` at a time; ``start(point)`` launches one (a ``crdist run`` process)."""
    start = start or (lambda point: _start(point, base, parent, address))
    waiting, running = list(todo), {}
    stop = _StopRequest()
    with stop:
        while running or (waiting and not stop.requested):
            while waiting and len(running) < concurrent and not stop.requested:
                point = waiting.pop(0)
                running[point.name] = (point, start(point), time.monotonic())
                status[point.name] = {"state": "running"}
                _write_status(parent, status)
                say(f"sweep  {point.name}: started ({len(todo) - len(waiting)}/{len(todo)}), "
                    f"log {parent / 'logs' / (point.name + '.log')}")
            if stop.requested and stop.forwarded is False:
                for _, process, _ in running.values():
                    process.send_signal(signal.SIGTERM)  # each driver checkpoints and exits 143
                stop.forwarded = True
            for name, (point, process, started) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                minutes = (time.monotonic() - started) / 60
                if code == 0:
                    status[name] = {"state": "finished", "minutes": round(minutes, 2)}
                    say(f"sweep  {name}: finished in {minutes:.1f} min")
                elif stop.requested:
                    status[name] = {"state": "stopped"}
                    say(f"sweep  {name}: stopped (exit {code}); the next `crdist sweep` resumes it")
                else:
                    error = _last_error(parent / "logs" / f"{name}.log", code)
                    status[name] = {"state": "failed", "error": error}
                    say(f"sweep  {name}: FAILED: {error}")
                _write_status(parent, status)
            time.sleep(0.5)
    if stop.requested:
        raise SweepStopped(f"stopped by {stop.signal_name}; finished runs are kept, the next `crdist sweep` "
                           "resumes the others")


def _start(point: Point, base: Path, parent: Path, address: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "crdist", "run", str(base), "--name", point.name, "--address", address,
               "--set", f"runs_dir={parent}"]
    for item in point.overrides:
        command += ["--set", item]
    (parent / "logs").mkdir(exist_ok=True)
    log = open(parent / "logs" / f"{point.name}.log", "a")
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    # Same process group as the sweep: a kill of the sweep's group ends its drivers too.
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


class _cluster:
    """The sweep's one Ray cluster: the one given (``--address``, ``RAY_ADDRESS``), or a private
    one this process holds for the sweep's duration, sized for ``concurrent`` runs."""

    def __init__(self, sweep: SweepConfig, base: Path, points: list[Point], address: str | None, parent: Path, say):
        self.sweep, self.base, self.points, self.address, self.parent, self.say = (
            sweep, base, points, address or os.environ.get("RAY_ADDRESS"), parent, say)

    def __enter__(self) -> str:
        if self.address:
            self.say(f"ray    the runs join the Ray cluster at {self.address}")
            return self.address
        import logging

        import ray

        from crdist.orchestrate.cluster import quiet_token_notice
        from crdist.orchestrate.leftovers import end_leftovers, mark_environment

        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(quiet_token_notice)

        studies = [load_study(self.base, p.overrides) for p in self.points]
        per_run = max(s.train.workers * s.train.cpus_per_worker + s.evaluate.cpus for s in studies)
        cpus = max(os.cpu_count() or 1, int(self.sweep.concurrent * per_run + 0.999))
        self.saved_env = dict(os.environ)
        token = mark_environment(self.parent)  # a later sweep ends what a killed one left running
        ended = end_leftovers(self.parent, token)
        if ended:
            self.say(f"ray    ended {len(ended)} process(es) an earlier, killed sweep left running")
        os.environ.pop("RAY_ADDRESS", None)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        address = ray.get_runtime_context().gcs_address
        self.say(f"ray    started the sweep's Ray cluster at {address} with {cpus} CPUs")
        return address

    def __exit__(self, *exc) -> None:
        if self.address:
            return
        import ray

        from crdist.orchestrate.leftovers import end_processes, processes_of_run

        ray.shutdown()
        end_processes(processes_of_run(self.parent))
        os.environ.clear()
        os.environ.update(self.saved_env)


class _StopRequest:
    """SIGTERM / SIGINT: forward SIGTERM to the running drivers, let them checkpoint, then stop."""

    def __init__(self):
        self.requested, self.forwarded, self.signal_name = False, False, ""

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.requested, self.signal_name = True, signal.Signals(signum).name


def _finished(point: Point, parent: Path, status: dict) -> bool:
    return (status.get(point.name, {}).get("state") == "finished"
            and (point.directory(parent) / "report" / "metrics.json").is_file())


def _read_status(parent: Path) -> dict:
    path = parent / STATUS
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_status(parent: Path, status: dict) -> None:
    write_json(parent / STATUS, status)


def _last_error(log: Path, code: int) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.is_file() else []
    errors = [line for line in lines if line.startswith("crdist: error:") or "Error" in line]
    return f"exit {code}: {(errors or lines or ['no output'])[-1][:500]}"


def _as_field(key: str, value: Any) -> Any:
    """A single value for a list-typed key is a one-element list."""
    tp: Any = StudyConfig
    for part in key.split("."):
        hints = typing.get_type_hints(tp) if hasattr(tp, "__dataclass_fields__") else {}
        if part not in hints:
            return value  # an unknown key: load_study names it
        tp = hints[part]
    return [value] if typing.get_origin(tp) is list and not isinstance(value, list) else value


def _name(values: dict) -> str:
    name = "_".join(f"{key.split('.')[-1]}-{value_label(value)}" for key, value in values.items())
    return "".join(c if c.isalnum() or c in "-_+.=" else "-" for c in name)
