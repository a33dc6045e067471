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

from crdist.atomic import atomic_path, write_json, write_text
from crdist.report.text import text_table
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


def table(agg: Aggregate) -> str:
    header = ["protocol", "method", *agg.group_axes] + [label for _, label in METRICS]
    rows = [[r["protocol"], r["method"], *[str(v) for v in r["group"].values()]]
            + [r[m].text() for m, _ in METRICS] for r in agg.rows]
    fixed = 2 + len(agg.group_axes)  # protocol, method and the axes: left; the metrics: right
    return text_table(header, rows, right=set(range(fixed, len(header))))


def write_aggregate(agg: Aggregate, out: Path, title: str, results: list[RunResult] = (),
                    reference: str | None = None) -> str:
    """metrics.json, report.md and the two plots per protocol under ``out`` (for a sweep over
    backbones, the scaling table and its plots; with two methods or more, the paired differences
    against ``reference``, by default the first method); returns the tables."""
    from crdist.report.paired import paired_differences, paired_json, paired_markdown, paired_table, write_paired_plots
    from crdist.report.scaling import BACKBONE_AXIS, scaling_json, scaling_rows, scaling_table, write_scaling_plots

    out.mkdir(parents=True, exist_ok=True)
    text = table(agg)
    scaling = scaling_rows(list(results), agg) if BACKBONE_AXIS in agg.group_axes else []
    scaling_text, scaling_plots = "", []
    if scaling:
        scaling_text = scaling_table(scaling, agg.protocols)
        scaling_plots = write_scaling_plots(scaling, agg.protocols, out, title)
    write_json(out / "metrics.json", {
        "scaling": scaling_json(scaling),
        "group_axes": agg.group_axes,
        "rows": [{k: (_spread_json(v) if isinstance(v, Spread) else v) for k, v in r.items()} for r in agg.rows],
        "final_accuracy": [{"method": m, "group": dict(zip(agg.group_axes, key)), "protocol": p,
                            "per_task": [_spread_json(s) for s in spreads]}
                           for (m, key, p), spreads in agg.final_accuracy.items()],
        "finished": agg.finished,
        "failed": [{"run": r.name, "values": r.values, "error": r.error} for r in agg.failed],
        "pending": agg.pending,
    })
    for protocol in agg.protocols:
        with atomic_path(out / f"final_accuracy_{protocol}.png") as tmp:
            _plot_final_accuracy(agg, protocol, tmp, title)
        with atomic_path(out / f"forgetting_{protocol}.png") as tmp:
            _plot_forgetting(agg, protocol, tmp, title)
    markdown = _markdown(agg, title, text)
    methods = list(dict.fromkeys(r["method"] for r in agg.rows))
    if results and len(methods) > 1:
        paired = paired_differences(list(results), agg.group_axes, agg.protocols, reference or methods[0])
        write_json(out / "paired.json", paired_json(paired))
        write_paired_plots(paired, out, title)
        markdown += "\n".join(paired_markdown(paired))
        text += (f"\n\npaired differences against {paired.reference} (mean, 95 % CI, n pairs of seeds)\n"
                 + paired_table(paired))
    if scaling:
        markdown += "\n".join(["", "## Scaling", "",
                               "Costs from the train jobs' summaries: per run the mean over its tasks (peak: the "
                               "largest rank's largest task), then mean ± std over the seeds.", "",
                               "```", scaling_text, "```", "", *[f"![{p}]({p})" for p in scaling_plots], ""])
        text += "\n\nscaling\n" + scaling_text
    write_text(out / "report.md", markdown)
    return text


def _markdown(agg: Aggregate, title: str, text: str) -> str:
    lines = [f"# {title}: sweep report", "",
             f"{len(agg.finished)} run(s) finished, {len(agg.failed)} failed, {len(agg.pending)} not finished. "
             "Each cell is mean ± sample std (n runs) over the seeds.", "", "```", text, "```", ""]
    if agg.failed:
        lines += ["## Failed runs (not in the means)", ""]
        lines += [f"* `{r.name}`: {r.error}" for r in agg.failed]
        lines.append("")
    if agg.pending:
        lines += ["## Not finished", "", *[f"* `{name}`" for name in agg.pending], ""]
    for protocol in agg.protocols:
        lines += [f"![final accuracy, {protocol}](final_accuracy_{protocol}.png)",
                  f"![forgetting, {protocol}](forgetting_{protocol}.png)", ""]
    return "\n".join(lines)


def _row_label(method: str, group: dict) -> str:
    return " ".join([method, *[str(v) for v in group.values()]])


def _plot_final_accuracy(agg: Aggregate, protocol: str, path: Path, title: str) -> None:
    plt = _pyplot()
    series = [(m, key, s) for (m, key, p), s in agg.final_accuracy.items() if p == protocol]
    tasks = len(series[0][2])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.25 * tasks * len(series)), 4.2))
    width = 0.8 / max(1, len(series))
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")  # past 10, tab10 repeats itself
    for k, (method, key, spreads) in enumerate(series):
        xs = [j + k * width - 0.4 + width / 2 for j in range(len(spreads))]
        ax.bar(xs, [s.mean for s in spreads], width, yerr=[s.std or 0.0 for s in spreads], capsize=2,
               color=colours(k % colours.N), label=_row_label(method, dict(zip(agg.group_axes, key))))
    ax.set_xticks(range(tasks), [f"T{j + 1}" for j in range(tasks)])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy of the last checkpoint")
    ax.set_title(f"{title}\nfinal accuracy per task ({protocol}; mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7, ncol=min(6, len(series)), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def _plot_forgetting(agg: Aggregate, protocol: str, path: Path, title: str) -> None:
    plt = _pyplot()
    rows = [r for r in agg.rows if r["protocol"] == protocol]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.6 * len(rows)), 4.2))
    width = 0.4
    for offset, metric, label in ((-width / 2, "average_forgetting", "forgetting"),
                                  (width / 2, "lump_forgetting", "LUMP forgetting")):
        ax.bar([i + offset for i in range(len(rows))], [r[metric].mean or 0.0 for r in rows], width,
               yerr=[r[metric].std or 0.0 for r in rows], capsize=2, label=label)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(rows)), [_row_label(r["method"], r["group"]) for r in rows], rotation=30, ha="right")
    ax.set_ylabel("forgetting (lower is better)")
    ax.set_title(f"{title}\nforgetting per method ({protocol}; mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _spread_json(s: Spread) -> dict:
    return {"mean": s.mean, "std": s.std, "n": s.n}


def value_label(value) -> str:
    """An axis value as text: a list joined by '+'."""
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def _protocol_order(name: str) -> tuple:
    known = ["knn", "linear", "finetune"]
    return (known.index(name) if name in known else len(known), name)
