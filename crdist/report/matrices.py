"""Assemble accuracy matrices A[i][j] from a run directory's evaluation files, each checked
against its digest first (a damaged one is an error naming it; resuming the run evaluates again)."""

from __future__ import annotations

import json

from crdist.errors import CrdistError
from crdist.integrity import problem
from crdist.rundir import RunDir


class ReportError(CrdistError, RuntimeError):
    pass


def collect(run_dir: RunDir, methods: list[str], protocols: list[str], tasks: int) -> dict[tuple[str, str], list[list[float]]]:
    """{(method, protocol): (T+1) × T matrix}; row 0 is the shared initial model c_0."""
    matrices = {}
    missing = []
    for method in methods:
        rows: dict[str, list[list[float]]] = {p: [] for p in protocols}
        for i in range(tasks + 1):
            cells = {p: [] for p in protocols}
            for j in range(1, tasks + 1):
                path = run_dir.evaluation(method, i, j)
                if not path.is_file():
                    missing.append(str(path))
                    continue
                accuracy = checked_accuracy(path, run_dir)
                for p in protocols:
                    if p not in accuracy:
                        raise ReportError(f"{path}: has no result for protocol {p!r}")
                    cells[p].append(accuracy[p])
            for p in protocols:
                rows[p].append(cells[p])
        for p in protocols:
            matrices[(method, p)] = rows[p]
    if missing:
        raise ReportError(f"{len(missing)} evaluation(s) missing, e.g. {missing[0]}")
    return matrices


def checked_accuracy(path, run_dir: RunDir) -> dict:
    """An evaluation file's accuracy per protocol, once it matches its digest; a damaged one is an
    error naming it."""
    reason = problem(path)
    if reason is not None:
        raise ReportError(f"{path}: {reason}. Resume the run (crdist resume {run_dir.root}) to "
                          "evaluate it again; crdist verify lists every damaged file")
    return json.loads(path.read_text())["accuracy"]


def draws(run_dir: RunDir, method: str, protocol: str, tasks: int) -> list[list[list[float]]] | None:
    """Each cell's accuracies over its protocol's seeded draws (``evaluate.finetune.repeats``), as
    its evaluation recorded them; None for a protocol that makes no such draws."""
    cells = []
    for i in range(tasks + 1):
        row = []
        for j in range(1, tasks + 1):
            details = json.loads(run_dir.evaluation(method, i, j).read_text()).get("details", {}).get(protocol, {})
            if "repeats" not in details:
                return None
            row.append(details["repeats"])
        cells.append(row)
    return cells
