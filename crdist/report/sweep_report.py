"""A sweep's report: the aggregate's table, metrics.json, report.md and plots per protocol; with
two methods or more the paired differences (crdist/report/paired.py), and for a sweep over
backbones the scaling table (crdist/report/scaling.py)."""

from __future__ import annotations

from pathlib import Path

from crdist.atomic import atomic_path, write_json, write_text
from crdist.report.aggregate import Aggregate, RunResult, Spread
from crdist.report.paired import paired_differences, paired_json, paired_markdown, paired_table, write_paired_plots
from crdist.report.plots import pyplot
from crdist.report.scaling import BACKBONE_AXIS, scaling_json, scaling_rows, scaling_table, write_scaling_plots
from crdist.report.text import text_table
from crdist.report.write import METRICS


def table(agg: Aggregate) -> str:
    header = ["protocol", "method", *agg.group_axes] + [label for _, label in METRICS]
    rows = [[r["protocol"], r["method"], *[str(v) for v in r["group"].values()]]
            + [r[m].text() for m, _ in METRICS] for r in agg.rows]
    fixed = 2 + len(agg.group_axes)  # protocol, method and the axes: left; the metrics: right
    return text_table(header, rows, right=set(range(fixed, len(header))))


def write_sweep_report(agg: Aggregate, out: Path, title: str, results: list[RunResult] = (),
                    reference: str | None = None) -> str:
    """metrics.json, report.md and the two plots per protocol under ``out`` (for a sweep over
    backbones, the scaling table and its plots; with two methods or more, the paired differences
    against ``reference``, by default the first method); returns the tables."""
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
    plt = pyplot()
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
    plt = pyplot()
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


def _spread_json(s: Spread) -> dict:
    return {"mean": s.mean, "std": s.std, "n": s.n}
