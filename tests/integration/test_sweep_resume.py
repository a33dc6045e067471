"""A real sweep of 2 seeds × 2 methods on seq-digits, killed mid-run, resumed and reported; then
one point failed on purpose, through the Python API, which reads the sweep as its report does; and
the docs' example notebook, executed on it."""

import json
import math
import os
import signal
import subprocess
import sys

import yaml

import crdist
from crdist.api import SUMMARY_METRICS
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

    assert_the_api_reads_what_the_report_holds(parent)

    # One point failed on purpose: its run directory's config changed underneath it, so its driver
    # refuses to go on. Run through the Python API, the sweep lists it apart and keeps the rest.
    broken = parent / "seed-1_methods-lpft"
    (broken / "report" / "metrics.json").unlink()
    config = yaml.safe_load((broken / "config.yaml").read_text())
    config["train"]["lr"] = 0.5
    (broken / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    script = "import json, sys, crdist; print(json.dumps(crdist.run_sweep(sys.argv[1]).failed().to_dict('records')))"
    rerun = subprocess.run([sys.executable, "-c", script, str(sweep)], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    (failed,) = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert failed["run"] == "seed-1_methods-lpft" and "was started with a different config" in failed["error"]
    assert (failed["seed"], failed["train.methods"]) == ("1", "lpft")
    assert "seed-0_methods-sgd: finished earlier, kept" in rerun.stdout
    assert_the_api_reads_what_the_report_holds(parent)
    assert json.loads((parent / "report" / "metrics.json").read_text())["failed"][0]["run"] == "seed-1_methods-lpft"

    # The docs' example notebook, executed on this sweep and one of its runs.
    notebook = execute_notebook(ROOT / "docs" / "notebooks" / "results.ipynb",
                                {"CRDIST_RUN": str(parent / "seed-0_methods-lpft"), "CRDIST_SWEEP": str(parent)})
    outputs = "".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in notebook.cells
                      if c.cell_type == "code" for o in c.outputs)
    assert "average_accuracy" in outputs and "seed-1_methods-lpft" in outputs and "image/png" in outputs


def same(a, b) -> bool:
    """Equal, counting None and NaN (pandas' empty cell) as the same."""
    empty = lambda x: x is None or (isinstance(x, float) and math.isnan(x))
    return (empty(a) and empty(b)) or a == b


def assert_the_api_reads_what_the_report_holds(parent):
    sweep = crdist.load_sweep(parent)
    report = json.loads((parent / "report" / "metrics.json").read_text())
    aggregate = sweep.aggregate()
    assert len(aggregate) == len(report["rows"]) * len(SUMMARY_METRICS)
    for row in report["rows"]:
        for metric in SUMMARY_METRICS:
            (got,) = aggregate[(aggregate["protocol"] == row["protocol"]) & (aggregate["method"] == row["method"])
                               & (aggregate["metric"] == metric)].to_dict("records")
            assert all(same(got[k], row[metric][k]) for k in ("mean", "std", "n")), (got, row[metric])
    paired = sweep.paired()
    comparisons = json.loads((parent / "report" / "paired.json").read_text())["comparisons"]
    assert len(paired) == len(comparisons)
    for c in comparisons:
        (got,) = paired[(paired["protocol"] == c["protocol"]) & (paired["method"] == c["method"])
                        & (paired["metric"] == c["metric"])].to_dict("records")
        assert all(same(got[k], c[k]) for k in ("mean", "std", "n", "verdict", "reference"))
        assert same(got["ci95_low"], (c["ci95"] or [None])[0])
    assert sweep.failed()[["run", "error"]].to_dict("records") == [{"run": f["run"], "error": f["error"]}
                                                                   for f in report["failed"]]
    # Every finished run's own numbers, with its axis values and seed in front.
    tidy = sweep.metrics()
    assert sorted(set(tidy["run"])) == sorted(report["finished"])
    for name in report["finished"]:
        mine = tidy[tidy["run"] == name]
        seed, methods = name.split("_")
        assert set(mine["seed"]) == {int(seed.split("-")[1])} and set(mine["train.methods"]) == {methods.split("-")[1]}
        reported = json.loads((parent / name / "report" / "metrics.json").read_text())
        summary = mine[mine["task"].isna()]
        got = {(r["method"], r["protocol"], r["metric"]): r["value"] for r in summary.to_dict("records")}
        want = {(m, p, k): v for m, protocols in reported.items() for p, values in protocols.items()
                for k, v in values.items()}
        assert got.keys() == want.keys() and all(same(got[k], want[k]) for k in want), (got, want)


def execute_notebook(path, env):
    """Run every cell of the notebook at ``path`` in a fresh kernel of this environment, with
    ``env`` added to its environment; the executed notebook (outputs included)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.update(env)  # the kernel is a process of its own: it inherits this environment
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return notebook
