"""Paired comparisons of a sweep's methods against one reference method.

Seeds vary a lot more between each other than two methods vary on the same seed (the same data
order, the same initial weights), so "is LP-FT better than SGD?" is asked of the per-seed
differences, not of two overlapping mean ± std cells. For every method, protocol and metric, in
each group of the axes that are neither the seed nor the methods, the runs are paired by seed:

* methods trained in one run: the pair is the method and the reference in that same run;
* ``train.methods`` as an axis: the pair is the method's run and the reference's run with the same
  seed (and the same values of every other axis).

Each pair gives difference = method − reference. Over the n pairs: their mean, sample std (n − 1),
and a 95 % confidence interval, mean ± t(0.975, n − 1) · std / √n (Student's t, since n is a
handful of seeds). The verdict is "lower" when the whole interval is below 0, "higher" when it is
above 0, else "not distinguishable" (always so with fewer than 2 pairs: there is no interval). A
failed or unfinished run, or one without the metric, is left out of its pairs and named, with why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from scipy.stats import t

from crdist.atomic import atomic_path
from crdist.report.aggregate import METHODS_AXIS, SEED_AXIS, RunResult, value_label
from crdist.report.text import text_table
from crdist.report.write import METRICS

CONFIDENCE = 0.95
PLOTTED_METRICS = ["average_accuracy", "average_forgetting"]  # also the ones the markdown and text show
LOWER, HIGHER, NOT_DISTINGUISHABLE = "lower", "higher", "not distinguishable"


@dataclass(frozen=True)
class LeftOut:
    seed: object
    run: str | None  # None when the grid has no run of the method for this seed
    reason: str


@dataclass
class Comparison:
    """One method against the reference, for one protocol, metric and group."""

    method: str
    protocol: str
    metric: str
    group: dict  # group axis → value label
    seeds: list = field(default_factory=list)
    differences: list[float] = field(default_factory=list)  # method − reference, one per seed
    left_out: list[LeftOut] = field(default_factory=list)
    mean: float | None = None
    std: float | None = None
    interval: tuple[float, float] | None = None  # the 95 % confidence interval of the mean difference
    verdict: str = NOT_DISTINGUISHABLE
    note: str | None = None  # why there is no interval, e.g. "n/a (1 pair)"

    @property
    def n(self) -> int:
        return len(self.differences)


@dataclass
class Paired:
    reference: str
    group_axes: list[str]
    protocols: list[str]
    comparisons: list[Comparison] = field(default_factory=list)

    def of(self, protocol: str, metrics=PLOTTED_METRICS) -> list[Comparison]:
        return [c for c in self.comparisons if c.protocol == protocol and c.metric in metrics]


def paired_differences(results: list[RunResult], group_axes: list[str], protocols: list[str],
                       reference: str) -> Paired:
    """Every method against ``reference``: per protocol, metric and group, paired by seed."""
    paired = Paired(reference, list(group_axes), list(protocols))
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault(tuple(value_label(r.values.get(a)) for a in group_axes), []).append(r)
    for protocol in protocols:
        for key, runs in groups.items():
            by_seed: dict[str, list[RunResult]] = {}
            for r in runs:
                by_seed.setdefault(value_label(r.values.get(SEED_AXIS)), []).append(r)
            declared = dict.fromkeys(m for r in runs for m in (_declared_methods(r) or []))
            methods = [m for m in declared if m != reference]
            for method in methods:
                for metric, _ in METRICS:
                    comparison = Comparison(method, protocol, metric, dict(zip(group_axes, key)))
                    for seed_runs in by_seed.values():
                        _pair(comparison, seed_runs, reference)
                    _summarise(comparison)
                    paired.comparisons.append(comparison)
    return paired


def _declared_methods(run: RunResult) -> list[str] | None:
    """The methods a run trains: its metrics' once finished, else its ``train.methods`` axis value;
    None when neither tells (an unfinished run of a sweep without that axis trains them all)."""
    if run.metrics is not None:
        return list(run.metrics)
    if METHODS_AXIS in run.values:
        value = run.values[METHODS_AXIS]
        return list(value) if isinstance(value, list) else [value]
    return None


def _runs_of(runs: list[RunResult], method: str) -> list[RunResult]:
    return [r for r in runs if _declared_methods(r) is None or method in _declared_methods(r)]


def _pair(comparison: Comparison, seed_runs: list[RunResult], reference: str) -> None:
    """Add this seed's difference to ``comparison``, or the reason it has none."""
    seed = seed_runs[0].values.get(SEED_AXIS)
    with_method, with_reference = _runs_of(seed_runs, comparison.method), _runs_of(seed_runs, reference)
    both = [r for r in with_method if any(r is x for x in with_reference)]
    if both:  # methods trained side by side in one run: the closest pair there is
        with_method = with_reference = both
    if not with_method or not with_reference:
        missing = comparison.method if not with_method else reference
        comparison.left_out.append(LeftOut(seed, None, f"no run of {missing}"))
        return
    values = []
    for method, run in ((comparison.method, with_method[0]), (reference, with_reference[0])):
        value, problem = _value(run, method, comparison.protocol, comparison.metric)
        if problem:
            if LeftOut(seed, run.name, problem) not in comparison.left_out:  # one run may be both sides
                comparison.left_out.append(LeftOut(seed, run.name, problem))
            continue
        values.append(value)
    if len(values) == 2:
        comparison.seeds.append(seed)
        comparison.differences.append(values[0] - values[1])


def _value(run: RunResult, method: str, protocol: str, metric: str) -> tuple[float | None, str | None]:
    if run.error is not None:
        return None, f"failed: {run.error}"
    if run.metrics is None:
        return None, "not finished"
    measured = run.metrics.get(method, {}).get(protocol)
    if measured is None:
        return None, f"no {protocol} results for {method}"
    if measured.get(metric) is None:
        return None, f"{metric} of {method} is undefined"
    return measured[metric], None


def _summarise(c: Comparison) -> None:
    if c.n == 0:
        c.note = "n/a (0 pairs)"
        return
    c.mean = sum(c.differences) / c.n
    if c.n < 2:  # one pair has no spread, so no interval and no verdict
        c.note = "n/a (1 pair)"
        return
    c.std = math.sqrt(sum((d - c.mean) ** 2 for d in c.differences) / (c.n - 1))
    half_width = t.ppf(0.5 + CONFIDENCE / 2, c.n - 1) * c.std / math.sqrt(c.n)
    c.interval = (c.mean - half_width, c.mean + half_width)
    if c.interval[1] < 0:
        c.verdict = LOWER
    elif c.interval[0] > 0:
        c.verdict = HIGHER


# ---- writing it down ----------------------------------------------------------------------------

def paired_json(paired: Paired) -> dict:
    return {
        "reference": paired.reference,
        "confidence": CONFIDENCE,
        "group_axes": paired.group_axes,
        "comparisons": [{
            "method": c.method, "reference": paired.reference, "protocol": c.protocol, "metric": c.metric,
            "group": c.group,
            "pairs": [{"seed": s, "difference": d} for s, d in zip(c.seeds, c.differences)],
            "mean": c.mean, "std": c.std, "n": c.n,
            "ci95": list(c.interval) if c.interval else None,
            "verdict": c.verdict, "note": c.note,
            "left_out": [{"seed": x.seed, "run": x.run, "reason": x.reason} for x in c.left_out],
        } for c in paired.comparisons],
    }


def _metric_label(metric: str) -> str:
    return dict(METRICS)[metric]


def _signed(x: float) -> str:
    return f"{x + 0.0:+.3f}"


def _interval_text(c: Comparison) -> str:
    return f"[{_signed(c.interval[0])}, {_signed(c.interval[1])}]" if c.interval else (c.note or "n/a")


def _cells(c: Comparison) -> list[str]:
    return [c.method, *[str(v) for v in c.group.values()], _metric_label(c.metric),
            "n/a" if c.mean is None else _signed(c.mean), _interval_text(c), str(c.n), c.verdict]


def paired_table(paired: Paired) -> str:
    """The short text version: average accuracy and forgetting, every protocol."""
    header = ["protocol", "method", *paired.group_axes, "metric", "mean diff", "95 % CI", "n", "verdict"]
    rows = [[p, *_cells(c)] for p in paired.protocols for c in paired.of(p)]
    numbers = {header.index("mean diff"), header.index("95 % CI"), header.index("n")}
    return text_table(header, rows, right=numbers)


def paired_markdown(paired: Paired) -> list[str]:
    """The report's section: a table per protocol, its plot (``write_paired_plots``), what was left out."""
    lines = ["", f"## Paired differences against {paired.reference}", "",
             f"Per seed, difference = method − {paired.reference} (same seed"
             + (f", same {', '.join(paired.group_axes)}" if paired.group_axes else "")
             + "); mean, 95 % confidence interval (Student's t, n − 1 degrees of freedom), n pairs. "
             "\"lower\" / \"higher\": the whole interval is below / above 0. Every metric is in `paired.json`.", ""]
    for protocol in paired.protocols:
        comparisons = paired.of(protocol)
        if not comparisons:
            continue
        header = ["method", *paired.group_axes, "metric", "mean diff", "95 % CI", "n", "verdict"]
        lines += [f"### {protocol}", "", "| " + " | ".join(header) + " |",
                  "|---|" + "---|" * len(paired.group_axes) + "---|---:|---:|---:|---|"]
        lines += ["| " + " | ".join(_cells(c)) + " |" for c in comparisons]
        lines += ["", f"![paired differences, {protocol}](paired_{protocol}.png)", ""]
    left_out = _left_out_by_run(paired)
    if left_out:
        lines += ["Left out of the pairs:", ""]
        for (seed, run, reason), affected in left_out.items():
            where = f"`{run}`" if run else "no run"
            lines.append(f"* seed {seed}, {where}: {reason} (left out of: {', '.join(affected)})")
        lines.append("")
    return lines


def _left_out_by_run(paired: Paired) -> dict[tuple, list[str]]:
    """Each left-out (seed, run, reason) once, with the comparisons it is missing from."""
    out: dict[tuple, list[str]] = {}
    for c in paired.comparisons:
        if c.metric not in PLOTTED_METRICS:
            continue
        for x in c.left_out:
            affected = out.setdefault((x.seed, x.run, x.reason), [])
            label = f"{c.method} ({c.protocol})"
            if label not in affected:
                affected.append(label)
    return out


def write_paired_plots(paired: Paired, out: Path, title: str) -> list[str]:
    """``paired_<protocol>.png`` per protocol; returns the file names written."""
    written = []
    for protocol in paired.protocols:
        if not paired.of(protocol):
            continue
        name = f"paired_{protocol}.png"
        with atomic_path(out / name) as tmp:
            _plot(paired, protocol, tmp, title)
        written.append(name)
    return written


def _plot(paired: Paired, protocol: str, path: Path, title: str) -> None:
    from crdist.report.plots import pyplot

    plt = pyplot()
    by_metric = {m: paired.of(protocol, [m]) for m in PLOTTED_METRICS}
    count = max(len(cs) for cs in by_metric.values())
    fig, axes = plt.subplots(1, len(PLOTTED_METRICS), figsize=(max(7.0, 2.0 + 1.1 * count * len(PLOTTED_METRICS)), 4.4))
    for ax, (metric, comparisons) in zip(axes, by_metric.items()):
        ax.axhline(0, color="black", linewidth=0.8)
        for x, c in enumerate(comparisons):
            # The seeds' own differences, spread a little sideways so equal values stay visible.
            jitter = [x + 0.12 * (k - (c.n - 1) / 2) / max(1, c.n - 1) for k in range(c.n)]
            ax.scatter(jitter, c.differences, s=14, color="tab:gray", alpha=0.8, zorder=2,
                       label="one seed" if x == 0 else None)
            if c.mean is None:
                continue
            error = [[c.mean - c.interval[0]], [c.interval[1] - c.mean]] if c.interval else None
            colour = {LOWER: "tab:blue", HIGHER: "tab:red"}.get(c.verdict, "black")
            ax.errorbar([x], [c.mean], yerr=error, fmt="o", color=colour, capsize=4, markersize=6, zorder=3,
                        label="mean, 95 % CI" if x == 0 else None)
            if c.verdict != NOT_DISTINGUISHABLE:  # the exceptions get a word; black means "not distinguishable"
                ax.annotate(c.verdict, (x, c.mean), xytext=(9, 0), textcoords="offset points", fontsize=7,
                            va="center", color=colour)
        ax.set_xticks(range(len(comparisons)), [_plot_label(c) for c in comparisons],
                      rotation=30 if len(comparisons) > 3 else 0, ha="right" if len(comparisons) > 3 else "center")
        ax.set_xlim(-0.6, max(0.6, len(comparisons) - 0.4))
        ax.set_ylabel(f"{_metric_label(metric)}: method − {paired.reference}")
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}: paired differences against {paired.reference} ({protocol})\n"
                 "mean and 95 % CI over seeds, dots: each seed; black: the interval holds 0", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def _plot_label(c: Comparison) -> str:
    return "\n".join([c.method, *[f"{axis.split('.')[-1]}={value}" for axis, value in c.group.items()]])
