"""Sweeps: the aggregation's arithmetic on hand-made results, clear errors in a sweep file, and a
driver's stop (the real sweep: tests/integration/test_sweep_resume.py)."""

import json
import os
import signal
import subprocess

import pytest

from crdist.config import ConfigError
from crdist.report.aggregate import RunResult, aggregate, spread
from crdist.report.sweep_report import write_sweep_report
from crdist.sweep import load_sweep
from tests.helpers import ROOT


def _metrics(acc, forgetting):
    row = {"average_accuracy": acc, "average_forgetting": forgetting, "lump_forgetting": forgetting / 2,
           "backward_transfer": -forgetting, "forward_transfer": None}
    return {"knn": row}


def test_the_aggregate_is_the_mean_and_sample_std_over_seeds_per_method_and_axis_value():
    results = [
        RunResult("a", {"seed": 0, "model.backbone": "cnn"}, {"sgd": _metrics(0.60, 0.30), "lpft": _metrics(0.70, 0.10)},
                  {("sgd", "knn"): [0.5, 0.7], ("lpft", "knn"): [0.6, 0.8]}),
        RunResult("b", {"seed": 1, "model.backbone": "cnn"}, {"sgd": _metrics(0.80, 0.10), "lpft": _metrics(0.70, 0.20)},
                  {("sgd", "knn"): [0.7, 0.9], ("lpft", "knn"): [0.6, 0.8]}),
        RunResult("c", {"seed": 2, "model.backbone": "cnn"}, {"sgd": _metrics(0.70, 0.20), "lpft": _metrics(0.70, 0.30)},
                  {("sgd", "knn"): [0.6, 0.8], ("lpft", "knn"): [0.6, 0.8]}),
        RunResult("d", {"seed": 0, "model.backbone": "resnet"}, {"sgd": _metrics(0.90, 0.00)},
                  {("sgd", "knn"): [0.9, 0.9]}),
        RunResult("e", {"seed": 1, "model.backbone": "resnet"}, error="exit 1: crdist: error: out of memory"),
    ]
    agg = aggregate(results, ["seed", "model.backbone"])
    rows = {(r["method"], r["group"]["model.backbone"]): r for r in agg.rows}
    # sgd on cnn: accuracies 0.6, 0.8, 0.7 → mean 0.7; deviations −0.1, 0.1, 0 → std √(0.02 / 2) = 0.1
    sgd = rows[("sgd", "cnn")]
    assert (sgd["average_accuracy"].mean, sgd["average_accuracy"].std, sgd["average_accuracy"].n) == (
        pytest.approx(0.7), pytest.approx(0.1), 3)
    # forgetting 0.3, 0.1, 0.2 → 0.2 ± 0.1; LUMP's is half of it here: 0.1 ± 0.05
    assert (sgd["average_forgetting"].mean, sgd["average_forgetting"].std) == (pytest.approx(0.2), pytest.approx(0.1))
    assert (sgd["lump_forgetting"].mean, sgd["lump_forgetting"].std) == (pytest.approx(0.1), pytest.approx(0.05))
    # lpft: 0.7 three times → std 0; forgetting 0.1, 0.2, 0.3 → 0.2 ± 0.1
    assert rows[("lpft", "cnn")]["average_accuracy"].std == pytest.approx(0.0)
    assert rows[("lpft", "cnn")]["average_forgetting"].std == pytest.approx(0.1)
    # One finished resnet run (the other failed): n = 1, no std; an undefined metric stays undefined.
    resnet = rows[("sgd", "resnet")]
    assert (resnet["average_accuracy"].mean, resnet["average_accuracy"].std, resnet["average_accuracy"].n) == (
        pytest.approx(0.9), None, 1)
    assert resnet["forward_transfer"].mean is None and resnet["forward_transfer"].text() == "n/a"
    # The failed run is listed with its error and counted nowhere.
    assert [(r.name, r.error) for r in agg.failed] == [("e", "exit 1: crdist: error: out of memory")]
    # Final accuracy per task: sgd on cnn, task 1: 0.5, 0.7, 0.6 → 0.6 ± 0.1
    task1 = agg.final_accuracy[("sgd", ("cnn",), "knn")][0]
    assert (task1.mean, task1.std, task1.n) == (pytest.approx(0.6), pytest.approx(0.1), 3)
    assert spread([0.5]).text() == "0.500 ± n/a (1)"


def _costs(seconds, samples_per_s, peaks, parameters=1_000_000, flops=2e9):
    return [{"seconds": t, "samples_per_second_per_worker": v, "peak_memory_bytes": p, "parameters": parameters,
             "flops_per_sample": flops} for t, v, p in zip(seconds, samples_per_s, peaks)]


def test_the_scaling_table_gives_each_backbone_its_costs_per_run_then_over_seeds(tmp_path):
    gib = 2**30
    results = [
        RunResult("a", {"seed": 0, "model.backbone": "cnn"}, {"sgd": _metrics(0.6, 0.3)}, {("sgd", "knn"): [0.5, 0.7]},
                  costs={"sgd": _costs([10, 20], [100, 200], [[1 * gib, 2 * gib], [3 * gib, 1 * gib]])}),
        RunResult("b", {"seed": 1, "model.backbone": "cnn"}, {"sgd": _metrics(0.8, 0.1)}, {("sgd", "knn"): [0.7, 0.9]},
                  costs={"sgd": _costs([30, 40], [300, 400], [[1 * gib, 1 * gib], [1 * gib, 1 * gib]])}),
        RunResult("c", {"seed": 0, "model.backbone": "vit"}, {"sgd": _metrics(0.9, 0.0)}, {("sgd", "knn"): [0.9, 0.9]},
                  costs={"sgd": _costs([5, 5], [50, 50], [[4 * gib], [4 * gib]], parameters=86_000_000, flops=1e11)}),
    ]
    agg = aggregate(results, ["model.backbone", "seed"])
    out = tmp_path / "report"
    text = write_sweep_report(agg, out, "scaling", results)
    rows = {r["group"]["model.backbone"]: r for r in json.loads((out / "metrics.json").read_text())["scaling"]}
    cnn = rows["cnn"]
    # per run: seconds 15 and 35 → 25 ± √200; samples/s 150 and 350 → 250 ± √20000; peak: the largest
    # rank of the largest task, 3 GiB and 1 GiB → 2 ± √2 GiB
    assert (cnn["seconds_per_task"]["mean"], cnn["seconds_per_task"]["std"]) == (25, pytest.approx(200**0.5))
    assert cnn["samples_per_second_per_worker"]["mean"] == 250
    assert (cnn["peak_memory_bytes"]["mean"], cnn["peak_memory_bytes"]["std"]) == (2 * gib, pytest.approx(2**0.5 * gib))
    assert cnn["protocols"]["knn"]["average_forgetting"]["mean"] == pytest.approx(0.2)
    assert (rows["vit"]["parameters"], rows["vit"]["flops_per_sample"], rows["vit"]["seconds_per_task"]["n"]) == (
        86_000_000, 1e11, 1)
    assert "86.00 M" in text and "100.000" in text  # parameters and GFLOPs per sample in the printed table
    assert (out / "scaling_forgetting.png").stat().st_size > 0 and (out / "scaling_throughput.png").stat().st_size > 0
    assert "## Scaling" in (out / "report.md").read_text()


def test_a_bad_axis_key_names_the_sweep_file_and_the_point(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: s\nbase: {ROOT / 'configs' / 'demo.yaml'}\naxes:\n  seed: [0, 1]\n  train.epoch: [1]\n")
    with pytest.raises(ConfigError, match=r"sweep.yaml: point seed-0_epoch-1: .*train.epoch.*did you mean 'train.epochs'"):
        load_sweep(sweep)
    sweep.write_text("name: s\nbase: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="base: nowhere.yaml: no such config file"):
        load_sweep(sweep)
    sweep.write_text(f"name: s\nbase: {ROOT / 'configs' / 'demo.yaml'}\nconcurent: 2\n")
    with pytest.raises(ConfigError, match="concurent: unknown key .*did you mean 'concurrent'"):
        load_sweep(sweep)


def test_sigterm_stops_the_running_drivers_and_starts_no_other(tmp_path):
    # Real processes stand in for the drivers: each exits on the SIGTERM the sweep passes on.
    import threading

    from crdist.sweep import Point, SweepStopped, _run_points

    points = [Point(f"p{i}", {"seed": i}, []) for i in range(3)]
    started = []

    def start(point):
        started.append(point.name)
        return subprocess.Popen(["sleep", "60"])

    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    status = {}
    with pytest.raises(SweepStopped, match="SIGTERM"):
        _run_points(points, ROOT, tmp_path, "unused", 2, status, lambda line: None, start=start)
    assert started == ["p0", "p1"]  # two at a time; p2 never started
    assert status == {"p0": {"state": "stopped"}, "p1": {"state": "stopped"}}
    assert json.loads((tmp_path / "sweep-status.json").read_text()) == status
