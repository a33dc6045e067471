"""Paired comparisons in a sweep's report: the statistics on hand-made run directories, worked out by
hand below; a failed run named and left out; ``compare_to``; ``train.methods`` as an axis."""

import json
import math

import pytest

from crdist.config import ConfigError
from crdist.report.aggregate import RunResult
from crdist.report.paired import paired_differences
from crdist.sweep import load_sweep, report_sweep
from tests.helpers import ROOT

T_975_2 = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom (3 pairs)
T_975_1 = 12.706204736174707  # 1 degree of freedom (2 pairs)
FAILURE = "exit 1: crdist: error: out of memory"


def _row(acc, forgetting):
    return {"average_accuracy": acc, "average_forgetting": forgetting, "lump_forgetting": forgetting / 2,
            "backward_transfer": -forgetting, "forward_transfer": None}


def _run_dir(parent, name, methods):
    """A finished run as its report leaves it: ``methods`` = {method: (avg accuracy, forgetting)}."""
    (parent / name / "report").mkdir(parents=True)
    metrics = {m: {"knn": _row(*v), "linear": _row(*v)} for m, v in methods.items()}
    (parent / name / "report" / "metrics.json").write_text(json.dumps(metrics))
    for method, (acc, _) in methods.items():  # the aggregate's final-accuracy plot reads the matrices' last rows
        for protocol in ("knn", "linear"):
            matrix = {"accuracy": [[0.1, 0.1], [acc, 0.1], [acc, acc]]}
            (parent / name / "report" / f"matrix_{method}_{protocol}.json").write_text(json.dumps(matrix))


def _sweep(tmp_path, body, finished, failed=()):
    """A sweep directory: its saved sweep file, finished runs' reports, and failed runs' status."""
    parent = tmp_path / "runs" / "s"
    parent.mkdir(parents=True)
    (parent / "sweep.yaml").write_text(f"name: s\nbase: {ROOT / 'configs' / 'demo.yaml'}\n{body}")
    for name, methods in finished.items():
        _run_dir(parent, name, methods)
    status = {name: {"state": "finished"} for name in finished}
    status.update({name: {"state": "failed", "error": FAILURE} for name in failed})
    (parent / "sweep-status.json").write_text(json.dumps(status))
    return parent


def _by(paired_json, method, metric, protocol="knn", **group):
    [c] = [c for c in paired_json["comparisons"]
           if (c["method"], c["metric"], c["protocol"]) == (method, metric, protocol)
           and all(c["group"][k] == v for k, v in group.items())]
    return c


def test_methods_in_one_run_are_paired_by_seed_against_the_first_method(tmp_path):
    # Seeds 0..2 finished; seed 3 failed. Methods sgd (the reference: first in train.methods), lpft, er.
    parent = _sweep(tmp_path, "set: ['train.methods=[sgd, lpft, er]']\naxes:\n  seed: [0, 1, 2, 3]\n", {
        "seed-0": {"sgd": (0.60, 0.20), "lpft": (0.70, 0.10), "er": (0.62, 0.05)},
        "seed-1": {"sgd": (0.70, 0.30), "lpft": (0.78, 0.15), "er": (0.68, 0.10)},
        "seed-2": {"sgd": (0.65, 0.25), "lpft": (0.76, 0.12), "er": (0.70, 0.07)},
    }, failed=["seed-3"])
    lines = []
    assert report_sweep(parent, lines.append) == 1  # a run failed
    report = parent / "report"
    paired = json.loads((report / "paired.json").read_text())
    assert paired["reference"] == "sgd" and paired["group_axes"] == [] and paired["confidence"] == 0.95

    # lpft − sgd, average accuracy: 0.70 − 0.60 = 0.10, 0.78 − 0.70 = 0.08, 0.76 − 0.65 = 0.11
    # mean = 0.29 / 3 = 0.096667; deviations 0.003333, −0.016667, 0.013333
    # std = √((0.003333² + 0.016667² + 0.013333²) / 2) = √(0.00046667 / 2) = 0.015275
    # half width = 4.302653 · 0.015275 / √3 = 0.037946 → CI [0.058721, 0.134612], all above 0: "higher"
    acc = _by(paired, "lpft", "average_accuracy")
    assert [p["seed"] for p in acc["pairs"]] == [0, 1, 2]
    assert [p["difference"] for p in acc["pairs"]] == pytest.approx([0.10, 0.08, 0.11])
    mean = (0.10 + 0.08 + 0.11) / 3
    std = math.sqrt(((0.10 - mean) ** 2 + (0.08 - mean) ** 2 + (0.11 - mean) ** 2) / 2)
    half = T_975_2 * std / math.sqrt(3)
    assert (mean, std, half) == (pytest.approx(0.096667, abs=1e-6), pytest.approx(0.015275, abs=1e-6),
                                 pytest.approx(0.037946, abs=1e-6))
    assert (acc["mean"], acc["std"], acc["n"]) == (pytest.approx(mean), pytest.approx(std), 3)
    assert acc["ci95"] == pytest.approx([mean - half, mean + half]) and acc["verdict"] == "higher"

    # lpft − sgd, forgetting: 0.10 − 0.20 = −0.10, 0.15 − 0.30 = −0.15, 0.12 − 0.25 = −0.13
    # mean = −0.38 / 3 = −0.126667; std = √((0.026667² + 0.023333² + 0.003333²) / 2) = 0.025166
    # half width = 4.302653 · 0.025166 / √3 = 0.062516 → CI [−0.189183, −0.064151], all below 0: "lower"
    forgetting = _by(paired, "lpft", "average_forgetting")
    assert [p["difference"] for p in forgetting["pairs"]] == pytest.approx([-0.10, -0.15, -0.13])
    assert (forgetting["mean"], forgetting["std"]) == (pytest.approx(-0.126667, abs=1e-6),
                                                       pytest.approx(0.025166, abs=1e-6))
    assert forgetting["ci95"] == pytest.approx([-0.189183, -0.064151], abs=1e-6) and forgetting["verdict"] == "lower"

    # er − sgd, average accuracy: 0.02, −0.02, 0.05 → mean 0.016667, std √((0.003333² + 0.036667² +
    # 0.033333²) / 2) = 0.035119, half width 4.302653 · 0.035119 / √3 = 0.087240
    # → CI [−0.070573, 0.103907]: it holds 0, "not distinguishable"
    er = _by(paired, "er", "average_accuracy")
    assert [p["difference"] for p in er["pairs"]] == pytest.approx([0.02, -0.02, 0.05])
    assert (er["mean"], er["std"]) == (pytest.approx(0.016667, abs=1e-6), pytest.approx(0.035119, abs=1e-6))
    assert er["ci95"] == pytest.approx([-0.070573, 0.103907], abs=1e-6)
    assert er["verdict"] == "not distinguishable"

    # The failed run is named and left out of every pair; the protocols are compared alike.
    for c in paired["comparisons"]:
        assert {"seed": 3, "run": "seed-3", "reason": f"failed: {FAILURE}"} in c["left_out"]
    assert _by(paired, "lpft", "average_accuracy", protocol="linear")["verdict"] == "higher"
    # A metric a run lacks (forward transfer is undefined here) leaves every pair out, with the reason.
    fwt = _by(paired, "lpft", "forward_transfer")
    assert (fwt["n"], fwt["mean"], fwt["ci95"], fwt["verdict"], fwt["note"]) == (0, None, None, "not distinguishable",
                                                                                "n/a (0 pairs)")
    assert {"seed": 0, "run": "seed-0", "reason": "forward_transfer of lpft is undefined"} in fwt["left_out"]
    assert {c["method"] for c in paired["comparisons"]} == {"lpft", "er"}

    markdown = (report / "report.md").read_text()
    assert "## Paired differences against sgd" in markdown and "### knn" in markdown and "### linear" in markdown
    assert "| lpft | forgetting ↓ | -0.127 | [-0.189, -0.064] | 3 | lower |" in markdown
    assert (f"* seed 3, `seed-3`: failed: {FAILURE} "
            "(left out of: lpft (knn), er (knn), lpft (linear), er (linear))") in markdown
    assert "![paired differences, knn](paired_knn.png)" in markdown
    for protocol in ("knn", "linear"):
        assert (report / f"paired_{protocol}.png").stat().st_size > 0
    printed = "\n".join(lines)
    assert "paired differences against sgd" in printed
    assert any(line.split()[:3] == ["knn", "lpft", "avg"] and line.endswith("higher") for line in printed.splitlines())


def test_compare_to_picks_the_reference_and_an_unknown_method_is_named(tmp_path):
    body = "set: ['train.methods=[sgd, lpft, er]']\ncompare_to: lpft\naxes:\n  seed: [0, 1]\n"
    parent = _sweep(tmp_path, body, {"seed-0": {"sgd": (0.60, 0.20), "lpft": (0.70, 0.10), "er": (0.62, 0.05)},
                                     "seed-1": {"sgd": (0.70, 0.30), "lpft": (0.78, 0.15), "er": (0.68, 0.10)}})
    assert report_sweep(parent, lambda line: None) == 0
    paired = json.loads((parent / "report" / "paired.json").read_text())
    assert paired["reference"] == "lpft"
    # sgd − lpft: −0.10, −0.08 → mean −0.09, std √(0.01² · 2 / 1) = 0.014142; 2 pairs: t with 1 degree
    # of freedom, half width 12.706205 · 0.014142 / √2 = 0.127062 → CI [−0.217062, 0.037062]
    sgd = _by(paired, "sgd", "average_accuracy")
    assert (sgd["mean"], sgd["std"], sgd["n"]) == (pytest.approx(-0.09), pytest.approx(0.014142, abs=1e-6), 2)
    assert sgd["ci95"] == pytest.approx([-0.09 - T_975_1 * 0.01, -0.09 + T_975_1 * 0.01], abs=1e-6)
    assert sgd["verdict"] == "not distinguishable"
    assert "## Paired differences against lpft" in (parent / "report" / "report.md").read_text()

    sweep = parent / "sweep.yaml"
    sweep.write_text(sweep.read_text().replace("compare_to: lpft", "compare_to: ewk"))
    with pytest.raises(ConfigError, match=r"sweep.yaml: compare_to: must be one of the sweep's methods, "
                                          r"sgd, lpft, er \(got 'ewk'\)"):
        load_sweep(sweep)


def test_with_methods_as_an_axis_the_pair_is_two_runs_of_the_same_seed_and_group(tmp_path):
    # 3 seeds × 2 methods × 2 epoch settings; seed 1's lpft run with 2 epochs failed.
    finished = {}
    acc = {1: {"sgd": [0.60, 0.70, 0.65], "lpft": [0.70, 0.78, 0.76]},
           2: {"sgd": [0.50, 0.55, 0.60], "lpft": [0.55, None, 0.60]}}
    for epochs, methods in acc.items():
        for method, values in methods.items():
            for seed, value in enumerate(values):
                if value is not None:
                    finished[f"seed-{seed}_methods-{method}_epochs-{epochs}"] = {method: (value, 0.1)}
    parent = _sweep(tmp_path, "axes:\n  seed: [0, 1, 2]\n  train.methods: [sgd, lpft]\n  train.epochs: [1, 2]\n",
                    finished, failed=["seed-1_methods-lpft_epochs-2"])
    assert report_sweep(parent, lambda line: None) == 1
    paired = json.loads((parent / "report" / "paired.json").read_text())
    # The reference is the first value of the train.methods axis; the epochs are a group.
    assert paired["reference"] == "sgd" and paired["group_axes"] == ["train.epochs"]
    one = _by(paired, "lpft", "average_accuracy", **{"train.epochs": "1"})
    # epochs 1: the same differences as in one run, 0.10, 0.08, 0.11 → CI [0.058721, 0.134612]: "higher"
    assert [p["difference"] for p in one["pairs"]] == pytest.approx([0.10, 0.08, 0.11])
    assert one["ci95"] == pytest.approx([0.058721, 0.134612], abs=1e-6) and one["verdict"] == "higher"
    # epochs 2: seed 1 is left out (its lpft run failed); 0.55 − 0.50 = 0.05, 0.60 − 0.60 = 0 → mean 0.025,
    # std √(2 · 0.025² / 1) = 0.035355, half width 12.706205 · 0.035355 / √2 = 0.317655
    # → CI [−0.292655, 0.342655]
    two = _by(paired, "lpft", "average_accuracy", **{"train.epochs": "2"})
    assert [(p["seed"], p["difference"]) for p in two["pairs"]] == [(0, pytest.approx(0.05)), (2, pytest.approx(0.0))]
    assert (two["mean"], two["std"], two["n"]) == (pytest.approx(0.025), pytest.approx(0.035355, abs=1e-6), 2)
    assert two["ci95"] == pytest.approx([-0.292655, 0.342655], abs=1e-6)
    assert two["verdict"] == "not distinguishable"
    assert two["left_out"] == [{"seed": 1, "run": "seed-1_methods-lpft_epochs-2", "reason": f"failed: {FAILURE}"}]
    assert (parent / "report" / "paired_knn.png").stat().st_size > 0


def test_one_pair_has_no_interval():
    results = [RunResult("a", {"seed": 0}, {"sgd": {"knn": _row(0.6, 0.2)}, "lpft": {"knn": _row(0.7, 0.1)}})]
    paired = paired_differences(results, [], ["knn"], "sgd")
    [acc] = [c for c in paired.comparisons if c.metric == "average_accuracy"]
    assert (acc.n, acc.mean, acc.interval, acc.verdict, acc.note) == (1, pytest.approx(0.1), None,
                                                                      "not distinguishable", "n/a (1 pair)")
