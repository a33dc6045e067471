"""crdist from Python: load a run or a sweep as numpy arrays and pandas DataFrames, and run studies
and sweeps from a program or a notebook.

    import crdist

    run = crdist.load_run("runs/demo")
    run.matrix("lpft", "knn")          # A[i][j]: rows c_0..c_T, columns tasks 1..T; NaN where not measured
    run.metrics()                      # tidy: method, protocol, metric, task, value
    run.events()                       # the journal's train and eval jobs: started, finished, ...

    sweep = crdist.load_sweep("runs/fashion-seeds")
    sweep.metrics()                    # every finished run's tidy metrics, with its axis values and seed
    sweep.failed()                     # the runs that failed, with their errors (never in the means)
    sweep.aggregate(), sweep.paired()  # the sweep report's tables, as DataFrames

    run = crdist.run_study("configs/demo.yaml", overrides=["train.methods=[sgd,lpft]"])
    run = crdist.resume_run("runs/demo")   # continue a run directory with the config it holds
    sweep = crdist.run_sweep("sweeps/seeds.yaml")
    crdist.write_report("runs/demo")       # rebuild a run's or a sweep's report from its files

The CLI's ``run``, ``resume``, ``sweep`` and ``report`` are these functions and a print.

Everything here reads the files a run writes (``docs/concepts.md``, "The run directory"); the
numbers are those of the report files, computed by the same code. Errors are crdist's exceptions
(``crdist.errors.CrdistError`` and its subclasses: ``ConfigError`` for a bad config or override,
``RunDirError`` for a directory that is not a run), never an exit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from crdist.errors import CrdistError
from crdist.rundir import RunDir, RunDirError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from crdist.report.aggregate import RunResult
    from crdist.study import StudyConfig
    from crdist.sweep import Point, SweepConfig

# A run's summary metrics, in the report's order (crdist/report/write.py: METRICS).
SUMMARY_METRICS = ("average_accuracy", "average_forgetting", "lump_forgetting", "backward_transfer",
                   "forward_transfer")
# The tidy tables' per-task rows: the last checkpoint's accuracy on each task.
FINAL_ACCURACY = "final_accuracy"


class SweepDirError(CrdistError, RuntimeError):
    """A directory that is not a sweep's."""


@dataclass(frozen=True)
class Run:
    """A run directory, read: its config, and what its evaluations and report hold so far."""

    path: Path
    config: "StudyConfig"
    tasks: int

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def methods(self) -> list[str]:
        return list(self.config.train.methods)

    @property
    def protocols(self) -> list[str]:
        return list(self.config.evaluate.protocols)

    @property
    def finished(self) -> bool:
        """Whether the run wrote its report (every job done)."""
        return (self.path / "report" / "metrics.json").is_file()

    def matrix(self, method: str, protocol: str) -> "np.ndarray":
        """A[i][j], (T+1) × T: the accuracy on task j+1 of checkpoint c_i adapted with that task's
        adaptation subset (row 0: the initial model, shared by every method); NaN where that
        evaluation has not run yet. A damaged evaluation file is an error naming it."""
        import numpy as np

        from crdist.report.matrices import checked_accuracy

        self._check(method=method, protocol=protocol)
        run_dir = RunDir(self.path)
        matrix = np.full((self.tasks + 1, self.tasks), np.nan)
        for i in range(self.tasks + 1):
            for j in range(1, self.tasks + 1):
                path = run_dir.evaluation(method, i, j)
                if not path.is_file():
                    continue
                matrix[i, j - 1] = checked_accuracy(path, run_dir)[protocol]
        return matrix

    def metrics(self) -> "pd.DataFrame":
        """One row per (method, protocol, metric[, task]): columns method, protocol, metric, task,
        value. The summary metrics (task <NA>) as the report computed them (metrics.json; for a run
        not finished, from each matrix that is complete), then ``final_accuracy`` per task (the last
        row of the matrix, where measured)."""
        import pandas as pd

        from crdist.evaluate.metrics import summarize

        reported = _read_json(self.path / "report" / "metrics.json") if self.finished else {}
        rows = []
        for method in self.methods:
            for protocol in self.protocols:
                matrix = self.matrix(method, protocol)
                summary = reported.get(method, {}).get(protocol)
                if summary is None and not _has_nan(matrix):
                    summary = summarize(matrix.tolist())
                for metric in SUMMARY_METRICS if summary is not None else ():
                    rows.append((method, protocol, metric, pd.NA, summary[metric]))
                for j, value in enumerate(matrix[-1], start=1):
                    if not math.isnan(value):
                        rows.append((method, protocol, FINAL_ACCURACY, j, float(value)))
        frame = pd.DataFrame(rows, columns=["method", "protocol", "metric", "task", "value"])
        frame["task"] = frame["task"].astype("Int64")
        frame["value"] = frame["value"].astype("float64")  # None (e.g. FWT of one task) → NaN
        return frame

    def events(self) -> "pd.DataFrame":
        """The journal's train and eval job events, in order: time (UTC), event (started, finished,
        stopped, failed, damaged, ...), kind (train or eval), method, checkpoint (an evaluation's:
        c_0 or METHOD/c_i), task (the task trained, or evaluated on), and the event's own fields
        (steps, resumed_from, workers, error, ...)."""
        import pandas as pd

        from crdist.orchestrate.journal import Journal

        rows = []
        for entry in Journal(RunDir(self.path).journal).entries():
            job = entry.get("job", "")
            kind, _, rest = job.partition("/")
            if kind not in ("train", "eval"):
                continue
            parts = rest.split("/")
            if kind == "train":  # train/METHOD/TASK
                where = {"method": parts[0], "checkpoint": None, "task": int(parts[1])}
            else:  # eval/c_0/TASK or eval/METHOD/c_I/TASK
                checkpoint = "/".join(parts[:-1])
                where = {"method": parts[0] if len(parts) == 3 else None, "checkpoint": checkpoint,
                         "task": int(parts[-1])}
            extra = {k: v for k, v in entry.items() if k not in ("time", "event", "job")}
            rows.append({"time": entry["time"], "event": entry["event"], "kind": kind, **where, "job": job, **extra})
        columns = ["time", "event", "kind", "method", "checkpoint", "task", "job"]
        frame = pd.DataFrame(rows, columns=list(dict.fromkeys(columns + [k for r in rows for k in r])))
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        frame["task"] = frame["task"].astype("Int64")
        return frame

    def train_steps(self) -> "pd.DataFrame":
        """Every training step the workers reported (logs/events.jsonl): method, task, phase,
        step, steps, epoch, loss, lr. A step trained again after a resume appears again."""
        import pandas as pd

        from crdist.track.history import read_events

        path = RunDir(self.path).logs / "events.jsonl"
        events = read_events(path)[0] if path.is_file() else []
        columns = ["method", "task", "phase", "step", "steps", "epoch", "loss", "lr"]
        rows = [{k: e.body.get(k) for k in columns} for e in events if e.body.get("kind") == "train"]
        return pd.DataFrame(rows, columns=columns)

    def _check(self, method: str, protocol: str) -> None:
        if method not in self.methods:
            raise KeyError(f"{self.path}: no method {method!r}; this run's methods: {', '.join(self.methods)}")
        if protocol not in self.protocols:
            raise KeyError(f"{self.path}: no protocol {protocol!r}; this run's protocols: {', '.join(self.protocols)}")


def load_run(path: str | Path) -> Run:
    """The run in ``path`` (a run directory: runs/NAME), finished or not."""
    import yaml

    from crdist.config import from_dict
    from crdist.data.manifest import Manifest
    from crdist.study import StudyConfig

    root = Path(path)
    run_dir = RunDir(root)
    if not run_dir.config_file.is_file():
        raise RunDirError(f"{root}: not a crdist run directory (it has no config.yaml)")
    study = from_dict(StudyConfig, yaml.safe_load(run_dir.config_file.read_text()), source=str(run_dir.config_file))
    return Run(root, study, len(Manifest.load(root).tasks))


@dataclass(frozen=True)
class Sweep:
    """A sweep's directory, read: its points, the runs that finished and those that failed."""

    path: Path
    config: "SweepConfig"
    points: list["Point"]
    status: dict  # sweep-status.json: point name → {"state", "error", ...}

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def axes(self) -> list[str]:
        return list(self.config.axes)

    def run(self, point: str) -> Run:
        """The run of the point named ``point`` (its directory's name, e.g. seed-0_methods-lpft)."""
        names = [p.name for p in self.points]
        if point not in names:
            raise KeyError(f"{self.path}: no point {point!r}; its points: {', '.join(names)}")
        return load_run(self.path / point)

    def runs(self) -> dict[str, Run]:
        """Every point whose run finished, by name."""
        return {r.name: self.run(r.name) for r in self._results() if r.metrics is not None}

    def metrics(self) -> "pd.DataFrame":
        """Every finished run's tidy metrics (``Run.metrics``) with columns run, seed and one per
        axis in front (a list value, such as train.methods, joined by '+')."""
        import pandas as pd

        from crdist.report.aggregate import SEED_AXIS, value_label

        frames = []
        finished = self.runs()
        for point in self.points:
            if point.name not in finished:
                continue
            run = finished[point.name]
            frame = run.metrics()
            front = {"run": point.name, SEED_AXIS: run.config.seed,
                     **{axis: value_label(point.values[axis]) for axis in self.axes if axis != SEED_AXIS}}
            for k, (column, value) in enumerate(front.items()):
                frame.insert(k, column, value)
            frames.append(frame)
        if not frames:
            return pd.DataFrame(columns=["run", SEED_AXIS, *[a for a in self.axes if a != SEED_AXIS], "method",
                                         "protocol", "metric", "task", "value"])
        return pd.concat(frames, ignore_index=True)

    def failed(self) -> "pd.DataFrame":
        """The runs that failed: run, one column per axis, error. Left out of every mean."""
        import pandas as pd

        from crdist.report.aggregate import value_label

        rows = [{"run": r.name, **{a: value_label(r.values.get(a)) for a in self.axes}, "error": r.error}
                for r in self._results() if r.error is not None]
        return pd.DataFrame(rows, columns=["run", *self.axes, "error"])

    @property
    def complete(self) -> bool:
        """Whether some run finished and none failed (``crdist sweep``'s and ``crdist report``'s exit 0)."""
        results = self._results()
        return any(r.metrics is not None for r in results) and not any(r.error is not None for r in results)

    def pending(self) -> list[str]:
        """The points neither finished nor failed (not run yet, or stopped)."""
        return [r.name for r in self._results() if r.metrics is None and r.error is None]

    def aggregate(self) -> "pd.DataFrame":
        """The sweep report's table: per protocol, method and group (every axis but the seed and the
        methods), each metric's mean, sample std and n over the seeds."""
        import pandas as pd

        from crdist.report.aggregate import aggregate

        agg = aggregate(self._results(), self.axes)
        rows = [{"protocol": r["protocol"], "method": r["method"], **r["group"], "metric": metric,
                 "mean": r[metric].mean, "std": r[metric].std, "n": r[metric].n}
                for r in agg.rows for metric in SUMMARY_METRICS]
        return pd.DataFrame(rows, columns=["protocol", "method", *agg.group_axes, "metric", "mean", "std", "n"])

    def paired(self) -> "pd.DataFrame":
        """The paired comparisons of the sweep report: each method against the reference (the
        sweep's compare_to, else the first method), paired by seed: the mean difference, its std,
        n pairs, the 95 % confidence interval and the verdict. Empty with a single method."""
        import pandas as pd

        from crdist.report.aggregate import aggregate
        from crdist.report.paired import paired_differences
        from crdist.sweep import reference_method

        results = self._results()
        agg = aggregate(results, self.axes)
        methods = list(dict.fromkeys(r["method"] for r in agg.rows))
        columns = ["protocol", "method", "reference", *agg.group_axes, "metric", "mean", "std", "n", "ci95_low",
                   "ci95_high", "verdict", "note"]
        if len(methods) < 2:
            return pd.DataFrame(columns=columns)
        paired = paired_differences(results, agg.group_axes, agg.protocols, reference_method(self.config, self.points))
        rows = [{"protocol": c.protocol, "method": c.method, "reference": paired.reference, **c.group,
                 "metric": c.metric, "mean": c.mean, "std": c.std, "n": c.n,
                 "ci95_low": c.interval[0] if c.interval else None, "ci95_high": c.interval[1] if c.interval else None,
                 "verdict": c.verdict, "note": c.note} for c in paired.comparisons]
        numbers = {"mean": "float64", "std": "float64", "ci95_low": "float64", "ci95_high": "float64"}
        return pd.DataFrame(rows, columns=columns).astype(numbers)  # None (no interval) → NaN

    def _results(self) -> list["RunResult"]:
        from crdist.report.aggregate import read_run

        return [read_run(p.name, p.values, p.directory(self.path), self.status.get(p.name, {}).get("error"))
                for p in self.points]


def load_sweep(path: str | Path) -> Sweep:
    """The sweep in ``path`` (its directory: RUNS_DIR/NAME, which holds sweep.yaml)."""
    from crdist.sweep import STATUS, SWEEP_FILE
    from crdist.sweep import load_sweep as load_sweep_file

    root = Path(path)
    if not (root / SWEEP_FILE).is_file():
        raise SweepDirError(f"{root}: not a sweep directory (it has no {SWEEP_FILE})")
    config, _, points = load_sweep_file(root / SWEEP_FILE)
    return Sweep(root, config, points, _read_json(root / STATUS))


def run_study(config: "str | Path | StudyConfig" = "configs/demo.yaml", overrides: Sequence[str] = (),
              name: str | None = None, address: str | None = None) -> Run:
    """Run the study of ``config`` (a YAML file, or a loaded ``StudyConfig``) with ``overrides``
    (``--set`` items, e.g. ``"train.methods=[sgd,lpft]"``) as ``crdist run`` does, in this process:
    it prints its progress, resumes what an earlier run of the same name left, and returns the run.
    ``address`` joins a Ray cluster instead of starting one."""
    from crdist.config import from_dict, to_dict
    from crdist.orchestrate.driver import run_study as drive
    from crdist.study import StudyConfig, load_study

    if isinstance(config, StudyConfig):
        study = from_dict(StudyConfig, to_dict(config), source="run_study", overrides=overrides)
        source = "(a StudyConfig)"
    else:
        study, source = load_study(config, overrides), str(config)
    if name:
        study = from_dict(StudyConfig, {**to_dict(study), "name": name}, source="--name")
    directory = Path(study.runs_dir) / study.name
    drive(study, source, address=address, directory=directory)
    return load_run(directory)


def resume_run(path: str | Path, address: str | None = None) -> Run:
    """Continue the run in ``path`` with the config its directory holds (``config.yaml``), as
    ``crdist resume`` does: finished jobs are kept, unfinished ones resume from their last
    checkpoint. Returns the run."""
    from crdist.orchestrate.driver import run_study as drive

    run = load_run(path)
    drive(run.config, str(RunDir(run.path).config_file), address=address, directory=run.path)
    return load_run(run.path)


def write_report(path: str | Path, say=print) -> "Run | Sweep":
    """(Re)build the report of the run or sweep directory ``path`` from the files its jobs wrote,
    ``say`` (print by default) given the table; returns the run or sweep, read again. A sweep with
    no finished run writes no report (``Sweep.failed()`` and ``Sweep.pending()`` say why)."""
    from crdist.data.manifest import Manifest
    from crdist.report.write import write_report as write
    from crdist.sweep import SWEEP_FILE, report_sweep

    root = Path(path)
    if (root / SWEEP_FILE).is_file():
        report_sweep(root, say)
        return load_sweep(root)
    run = load_run(root)
    summary = write(RunDir(root), run.config, Manifest.load(root))  # the stream's manifest, copied at start
    say(f"report written to {summary.directory}\n\n{summary.table}")
    return run


def run_sweep(sweep_file: str | Path, overrides: Sequence[str] = (), address: str | None = None) -> Sweep:
    """Run the points of the sweep in ``sweep_file`` that have not finished, as ``crdist sweep``
    does, and return the sweep. A point that fails is listed by ``Sweep.failed()``, not raised."""
    from crdist.sweep import load_sweep as load_sweep_file
    from crdist.sweep import run_sweep as drive

    sweep, _, _ = load_sweep_file(Path(sweep_file), overrides)
    drive(Path(sweep_file), address=address, overrides=overrides)
    return load_sweep(Path(sweep.runs_dir) / sweep.name)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _has_nan(matrix) -> bool:
    import numpy as np

    return bool(np.isnan(matrix).any())
