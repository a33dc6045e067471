"""Write a run's report: per method × protocol the matrix (CSV, JSON, PNG), metrics.json, report.md."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from crdist.atomic import atomic_path, write_json, write_text
from crdist.data.manifest import Manifest
from crdist.evaluate.metrics import summarize
from crdist.rundir import RunDir
from crdist.report.matrices import collect, draws
from crdist.report.plots import heatmap

METRICS = [
    ("average_accuracy", "avg acc ↑"),
    ("average_forgetting", "forgetting ↓"),
    ("lump_forgetting", "LUMP forg. ↓"),
    ("backward_transfer", "BWT ↑"),
    ("forward_transfer", "FWT ↑"),
]


@dataclass
class ReportSummary:
    directory: Path
    metrics: dict  # {method: {protocol: {metric: value}}}
    table: str  # the comparison, as printed on the terminal


def write_report(run_dir: RunDir, study, manifest: Manifest) -> ReportSummary:
    methods, protocols, tasks = study.train.methods, study.evaluate.protocols, len(manifest.tasks)
    matrices = collect(run_dir, methods, protocols, tasks)
    out = run_dir.report
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict = {m: {} for m in methods}
    for (method, protocol), matrix in matrices.items():
        stem = f"matrix_{method}_{protocol}"
        write_text(out / f"{stem}.csv", _csv(matrix))
        document = {
            "method": method,
            "protocol": protocol,
            "rows": [f"c_{i}" for i in range(tasks + 1)],
            "columns": [f"task {j}" for j in range(1, tasks + 1)],
            "accuracy": matrix,
        }
        document.update(_within_cell(draws(run_dir, method, protocol, tasks)))
        write_json(out / f"{stem}.json", document)
        with atomic_path(out / f"{stem}.png") as tmp:
            heatmap(matrix, f"{study.name}: {method}, {protocol}", tmp)
        metrics[method][protocol] = summarize(matrix)
    write_json(out / "metrics.json", metrics)
    table = comparison_table(metrics, methods, protocols)
    write_text(out / "report.md", _markdown(study, manifest, metrics, matrices, methods, protocols))
    return ReportSummary(out, metrics, table)


def _within_cell(cells: list[list[list[float]]] | None) -> dict:
    """A cell averaged over seeded draws: how many, each draw's accuracy, and their sample std (null
    with one draw): the noise left in that cell after averaging is about std / sqrt(repeats)."""
    if cells is None:
        return {}
    def std(values):
        if len(values) < 2:
            return None
        mean = sum(values) / len(values)
        return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return {"repeats": len(cells[0][0]), "draws": cells, "draw_std": [[std(c) for c in row] for row in cells]}


def _csv(matrix: list[list[float]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["checkpoint"] + [f"task {j + 1}" for j in range(len(matrix[0]))])
    for i, row in enumerate(matrix):
        writer.writerow([f"c_{i}"] + [f"{v:.4f}" for v in row])
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{round(value, 3) + 0.0:.3f}"  # + 0.0 turns a rounded -0.0 into 0.0


def comparison_table(metrics: dict, methods: list[str], protocols: list[str]) -> str:
    header = ["protocol", "method"] + [label for _, label in METRICS]
    rows = [[p, m] + [_fmt(metrics[m][p][key]) for key, _ in METRICS] for p in protocols for m in methods]
    widths = [max(len(str(r[c])) for r in [header] + rows) for c in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) if c < 2 else str(v).rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
    out = [line(header), "  ".join("-" * w for w in widths)]
    for k, row in enumerate(rows):
        if k and k % len(methods) == 0:
            out.append("")
        out.append(line(row))
    return "\n".join(out)


def _markdown(study, manifest, metrics, matrices, methods, protocols) -> str:
    tasks = len(manifest.tasks)
    lines = [
        f"# {study.name}: continual pretraining report",
        "",
        f"Stream: **{manifest.benchmark}**, {tasks} tasks "
        f"({'; '.join(f'T{t.index}: classes {t.classes}' for t in manifest.tasks)}). "
        f"Backbone: **{study.model.backbone}**, head: {study.model.head}. "
        f"Training: {study.train.workers} workers, DeepSpeed ZeRO-{study.train.zero_stage}, "
        f"{study.train.epochs} epoch(s) per task"
        + (f" (at most {study.train.max_steps} steps)" if study.train.max_steps else "")
        + f", seed {study.seed}.",
        "",
        "A[i][j] is the test accuracy on task j of checkpoint c_i adapted with task j's adaptation subset "
        "(c_0 = the initial model). Average accuracy = mean of the last row; forgetting = mean over j < T of "
        "max_{i in j..T-1} A[i][j] − A[T][j]; LUMP forgetting (the paper's LUMP code) = (1/T) Σ over all j of "
        "max_{i in 1..T} A[i][j] − A[T][j]; BWT = mean over j < T of A[T][j] − A[j][j]; "
        "FWT = mean over j > 1 of A[j−1][j] − A[0][j].",
        "",
    ]
    for protocol in protocols:
        lines += [f"## Protocol: {protocol}", "", "| method | " + " | ".join(l for _, l in METRICS) + " |"]
        lines.append("|---|" + "---:|" * len(METRICS))
        for method in methods:
            lines.append(f"| {method} | " + " | ".join(_fmt(metrics[method][protocol][k]) for k, _ in METRICS) + " |")
        lines.append("")
        for method in methods:
            matrix = matrices[(method, protocol)]
            lines += [f"**{method}** (`matrix_{method}_{protocol}.csv`, `.png`)", ""]
            lines.append("| | " + " | ".join(f"T{j}" for j in range(1, tasks + 1)) + " |")
            lines.append("|---|" + "---:|" * tasks)
            for i, row in enumerate(matrix):
                lines.append(f"| c_{i} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
            lines.append("")
    return "\n".join(lines)
