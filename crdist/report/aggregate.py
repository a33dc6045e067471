"""Aggregate the runs of a sweep: per protocol, one row per method (and per value of every axis that
is not the seed), each metric as mean ± std over the seeds, with n; failed runs listed, never
averaged out.

std is the sample standard deviation (n − 1 in the denominator), the spread a reader would compute
from the n values; with n = 1 it is undefined and shown as "n/a".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from crdist.report.write import METRICS

SEED_AXIS = "seed"
METHODS_AXIS = "train.methods"


@dataclass(frozen=True)
class RunResult:
    """One point of a sweep: its axis values and, once finished, what its report holds."""

    name: str
    values: dict  # axis → value
    metrics: dict | None = None  # the run's metrics.json: {method: {protocol: {metric: value}}}
    final_rows: dict | None = None  # {(method, protocol): the matrix's last row}
    costs: dict | None = None  # {method: [its train jobs' summaries, task 1..T]} (crdist/report/scaling.py)
    error: str | None = None  # why it failed; None when it finished (or has not run)


@dataclass(frozen=True)
class Spread:
    mean: float | None
    std: float | None
    n: int

    def text(self) -> str:
        if self.mean is None:
            return "n/a"
        spread = "n/a" if self.std is None else f"{self.std:.3f}"
        return f"{self.mean + 0.0:.3f} ± {spread} ({self.n})"


def spread(values: list[float | None]) -> Spread:
    present = [v for v in values if v is not None]
    n = len(present)
    if n == 0:
        return Spread(None, None, 0)
    mean = sum(present) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / (n - 1)) if n > 1 else None
    return Spread(mean, std, n)


@dataclass
class Aggregate:
    group_axes: list[str]  # the axes that tell rows apart (not the seed, not the methods)
    protocols: list[str]
    rows: list[dict] = field(default_factory=list)  # {"method", "group": {axis: value}, "protocol", metric: Spread}
    final_accuracy: dict = field(default_factory=dict)  # (method, group key, protocol) → [Spread per task]
    finished: list[str] = field(default_factory=list)
    failed: list[RunResult] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


def aggregate(results: list[RunResult], axes: list[str]) -> Aggregate:
    group_axes = [a for a in axes if a not in (SEED_AXIS, METHODS_AXIS)]
    done = [r for r in results if r.metrics is not None]
    protocols = sorted({p for r in done for m in r.metrics.values() for p in m}, key=_protocol_order)
    agg = Aggregate(group_axes, protocols, finished=[r.name for r in done],
                    failed=[r for r in results if r.error is not None],
                    pending=[r.name for r in results if r.metrics is None and r.error is None])
    groups: dict[tuple, list[RunResult]] = {}
    for r in done:
        groups.setdefault(tuple(value_label(r.values.get(a)) for a in group_axes), []).append(r)
    methods = list(dict.fromkeys(m for r in done for m in r.metrics))
    for protocol in protocols:
        for key, runs in groups.items():
            for method in methods:
                having = [r for r in runs if protocol in r.metrics.get(method, {})]
                if not having:
                    continue
                row = {"method": method, "group": dict(zip(group_axes, key)), "protocol": protocol}
                for metric, _ in METRICS:
                    row[metric] = spread([r.metrics[method][protocol][metric] for r in having])
                agg.rows.append(row)
                lasts = [r.final_rows[(method, protocol)] for r in having if r.final_rows]
                if lasts:
                    agg.final_accuracy[(method, key, protocol)] = [spread(list(col)) for col in zip(*lasts)]
    return agg


def read_run(name: str, values: dict, run_dir: Path, error: str | None = None) -> RunResult:
    """A point's result from its run directory's report (written when the run finished)."""
    metrics_file = run_dir / "report" / "metrics.json"
    if error is not None or not metrics_file.is_file():
        return RunResult(name, values, error=error)
    metrics = json.loads(metrics_file.read_text())
    final_rows = {}
    for method, protocols in metrics.items():
        for protocol in protocols:
            matrix_file = run_dir / "report" / f"matrix_{method}_{protocol}.json"
            if matrix_file.is_file():
                final_rows[(method, protocol)] = json.loads(matrix_file.read_text())["accuracy"][-1]
    costs = {}
    for method in metrics:
        summaries = sorted((run_dir / "models" / method).glob("c_*.train.json"), key=lambda p: int(p.stem.split("_")[1].split(".")[0]))
        costs[method] = [json.loads(p.read_text()) for p in summaries]
    return RunResult(name, values, metrics, final_rows, costs=costs)


def value_label(value) -> str:
    """An axis value as text: a list joined by '+'."""
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def _protocol_order(name: str) -> tuple:
    known = ["knn", "linear", "finetune"]
    return (known.index(name) if name in known else len(known), name)
