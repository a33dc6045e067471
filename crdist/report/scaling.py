"""A backbone-size scaling study: what each backbone costs beside what it forgets.

Written for a sweep with a ``model.backbone`` axis: one row per backbone (and method, and value of
any other axis that is not the seed) with its parameters, training FLOPs per sample, samples/s and
peak memory per worker, and training time per task, all from the train jobs' summaries
(``models/<method>/c_<i>.train.json``), beside each protocol's average accuracy and forgetting.
Costs are taken per run (the mean over its tasks; the peak is the largest rank's largest task) and
then given as mean ± sample std over the seeds, like the metrics. A task that was resumed counts
its last attempt only. Two plots: forgetting against parameters, throughput against parameters.
"""

from __future__ import annotations

from pathlib import Path

from crdist.atomic import atomic_path
from crdist.report.aggregate import Aggregate, RunResult, Spread, spread, value_label

BACKBONE_AXIS = "model.backbone"


def _per_run(summaries: list[dict], key: str, combine=lambda xs: sum(xs) / len(xs)):
    values = [s[key] for s in summaries if s.get(key) is not None]
    return combine(values) if values else None


def scaling_rows(results: list[RunResult], agg: Aggregate) -> list[dict]:
    """One row per (group, method) of ``agg`` whose runs have train summaries."""
    rows = []
    groups = list(dict.fromkeys(tuple(r["group"].items()) for r in agg.rows))
    methods = list(dict.fromkeys(r["method"] for r in agg.rows))
    for group in groups:
        runs = [r for r in results if r.metrics is not None and r.costs
                and all(value_label(r.values.get(axis)) == value for axis, value in group)]
        for method in methods:
            per_run = [r.costs[method] for r in runs if r.costs.get(method)]
            if not per_run:
                continue
            first = per_run[0][0]
            row = {
                "group": dict(group), "method": method,
                "parameters": first.get("parameters"),
                "flops_per_sample": first.get("flops_per_sample"),
                "samples_per_second_per_worker": spread([_per_run(s, "samples_per_second_per_worker") for s in per_run]),
                "peak_memory_bytes": spread([_per_run(s, "peak_memory_bytes", lambda xs: max(max(x) for x in xs))
                                             for s in per_run]),
                "seconds_per_task": spread([_per_run(s, "seconds") for s in per_run]),
                "protocols": {},
            }
            for metric_row in agg.rows:
                if metric_row["method"] == method and tuple(metric_row["group"].items()) == group:
                    row["protocols"][metric_row["protocol"]] = {
                        "average_accuracy": metric_row["average_accuracy"],
                        "average_forgetting": metric_row["average_forgetting"]}
            rows.append(row)
    return rows


def scaling_table(rows: list[dict], protocols: list[str]) -> str:
    header = ["backbone", "method", *[a for a in rows[0]["group"] if a != BACKBONE_AXIS],
              "params", "GFLOPs/sample", "samples/s/worker", "peak GiB/worker", "train s/task"]
    for protocol in protocols:
        header += [f"{protocol} acc", f"{protocol} forg"]
    body = []
    for r in rows:
        line = [str(r["group"].get(BACKBONE_AXIS, "")), r["method"],
                *[str(v) for a, v in r["group"].items() if a != BACKBONE_AXIS],
                f"{r['parameters'] / 1e6:.2f} M" if r["parameters"] else "n/a",
                f"{r['flops_per_sample'] / 1e9:.3f}" if r["flops_per_sample"] else "n/a",
                _short(r["samples_per_second_per_worker"], "{:.0f}"),
                _short(_scaled(r["peak_memory_bytes"], 2**30), "{:.2f}"),
                _short(r["seconds_per_task"], "{:.1f}")]
        for protocol in protocols:
            cell = r["protocols"].get(protocol)
            line += [_short(cell["average_accuracy"], "{:.3f}") if cell else "n/a",
                     _short(cell["average_forgetting"], "{:.3f}") if cell else "n/a"]
        body.append(line)
    widths = [max(len(x[c]) for x in [header] + body) for c in range(len(header))]
    fixed = len(header) - 5 - 2 * len(protocols)
    fmt = lambda r: "  ".join(v.ljust(w) if c < fixed else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)])


def scaling_json(rows: list[dict]) -> list[dict]:
    def plain(value):
        if isinstance(value, Spread):
            return {"mean": value.mean, "std": value.std, "n": value.n}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return [plain(r) for r in rows]


def write_scaling_plots(rows: list[dict], protocols: list[str], out: Path, title: str) -> list[str]:
    """scaling_forgetting.png and scaling_throughput.png under ``out``; returns their names."""
    rows = [r for r in rows if r["parameters"]]
    others = lambda r: tuple((a, v) for a, v in r["group"].items() if a != BACKBONE_AXIS)  # noqa: E731
    series = list(dict.fromkeys((r["method"], others(r)) for r in rows))

    def lines(value_of, protocol=None):
        """(label, parameters, spreads) per method and other axis values, by size."""
        for method, rest in series:
            points = sorted((r for r in rows if r["method"] == method and others(r) == rest
                             and (protocol is None or protocol in r["protocols"])), key=lambda r: r["parameters"])
            label = " ".join([method, *[str(v) for _, v in rest]]) + (f", {protocol}" if protocol else "")
            yield label, [r["parameters"] for r in points], [value_of(r) for r in points]

    forgetting = [line for protocol in protocols
                  for line in lines(lambda r, p=protocol: r["protocols"][p]["average_forgetting"], protocol)]
    _plot(out / "scaling_forgetting.png", forgetting, rows,
          lambda r: max((p["average_forgetting"].mean or 0.0) for p in r["protocols"].values()),
          "average forgetting (lower is better)", f"{title}\nforgetting against backbone size (mean ± std over seeds)",
          log_y=False)
    _plot(out / "scaling_throughput.png", list(lines(lambda r: r["samples_per_second_per_worker"])), rows,
          lambda r: r["samples_per_second_per_worker"].mean or 0.0,
          "training samples/s per worker", f"{title}\nthroughput against backbone size (mean ± std over seeds)",
          log_y=True)
    return ["scaling_forgetting.png", "scaling_throughput.png"]


def _plot(path: Path, lines, rows: list[dict], name_at, ylabel: str, title: str, log_y: bool) -> None:
    from crdist.report.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, xs, spreads in lines:
        ax.errorbar(xs, [s.mean for s in spreads], yerr=[s.std or 0.0 for s in spreads], marker="o", capsize=3,
                    label=label)
    _name_points(ax, rows, name_at)
    if not log_y:
        ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log" if log_y else "linear")
    ax.set_xlabel("parameters")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _name_points(ax, rows: list[dict], y_of) -> None:
    seen = set()
    for r in rows:
        name = r["group"].get(BACKBONE_AXIS)
        if name in seen:
            continue
        seen.add(name)
        ax.annotate(str(name), (r["parameters"], y_of(r)), textcoords="offset points", xytext=(4, 6), fontsize=7)


def _scaled(s: Spread, by: float) -> Spread:
    return Spread(None if s.mean is None else s.mean / by, None if s.std is None else s.std / by, s.n)


def _short(s: Spread, fmt: str) -> str:
    if s.mean is None:
        return "n/a"
    return fmt.format(s.mean) + ("" if s.std is None else " ± " + fmt.format(s.std))
