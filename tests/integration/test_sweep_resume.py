"""A real sweep of 2 seeds × 2 methods on seq-digits, killed mid-run, resumed and reported."""

import json
import os
import signal
import subprocess
import sys

from crdist.bench.faults import checkpoint_on_disk, wait_for
from tests.helpers import ROOT
from tests.helpers.studies import finish, finished_once


def test_a_sweep_of_two_seeds_and_two_methods_is_killed_resumes_and_reports(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    base = os.path.relpath(ROOT / "configs" / "demo.yaml", tmp_path)  # relative to the sweep file, as usual
    sweep.write_text(
        f"name: digits\nbase: {base}\nruns_dir: {tmp_path / 'runs'}\n"
        # Task 1 (2 classes) has 7 steps an epoch: 25 epochs hold the 160 steps. The kill below,
        # once the checkpoint at step 40 is on disk, then lands mid-task even at 30 ms a step (with
        # 35 steps and a checkpoint every 10, a fast machine had finished the task first).
        f"set: [data.tasks=1, train.epochs=25, train.max_steps=160, checkpoint.every_steps=40, "
        f"'evaluate.protocols=[knn]', "
        f"data.shards={tmp_path / 'shards'}]\n"
        "axes:\n  seed: [0, 1]\n  train.methods: [sgd, lpft]\nconcurrent: 1\n")
    parent = tmp_path / "runs" / "digits"
    command = [sys.executable, "-m", "crdist", "sweep", str(sweep)]

    def run(log_name):
        return subprocess.Popen(command, cwd=ROOT, stdout=open(tmp_path / log_name, "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)

    first = run("first.log")
    try:
        # Kill the sweep's whole process group (the sweep, its cluster, its drivers) once the first
        # run has finished and the second is mid-task.
        wait_for(checkpoint_on_disk(parent / "seed-0_methods-lpft", "lpft", 1, 40), timeout=900,
                 what="the second run's first checkpoint", alive=first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    status = json.loads((parent / "sweep-status.json").read_text())
    assert status["seed-0_methods-sgd"]["state"] == "finished"
    assert status["seed-0_methods-lpft"]["state"] == "running"

    second = run("second.log")
    try:
        assert finish(second, timeout=1200) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    output = (tmp_path / "second.log").read_text()
    assert "seed-0_methods-sgd: finished earlier, kept" in output
    assert "seed-0_methods-lpft: started" in output  # resumed by name, from its checkpoint
    interrupted = parent / "seed-0_methods-lpft"
    jobs = finished_once(interrupted)  # no finished job of the killed run ran again
    assert any((e.get("resumed_from") or 0) >= 40 for e in jobs.values())  # task 1 went on from its checkpoint
    metrics = json.loads((parent / "report" / "metrics.json").read_text())
    rows = {(r["method"], r["protocol"]): r for r in metrics["rows"]}
    assert set(rows) == {("sgd", "knn"), ("lpft", "knn")}
    assert all(rows[k]["average_accuracy"]["n"] == 2 for k in rows) and metrics["failed"] == []
    assert {p.name for p in (parent / "report").glob("*.png")} == {"final_accuracy_knn.png", "forgetting_knn.png", "paired_knn.png"}

    # `crdist report` over the sweep directory rebuilds the same table.
    report = subprocess.run([sys.executable, "-m", "crdist", "report", str(parent)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0 and "lpft" in report.stdout and "± " in report.stdout
