"""The Python API on a run directory written here (its config, manifest and sealed evaluation
files, as a driver writes them) and on what is not a run: NaN where a run has not measured yet,
crdist's exceptions for bad input. The API on real runs and sweeps: tests/integration."""

import json

import numpy as np
import pytest
import yaml

import crdist
from crdist.api import FINAL_ACCURACY, SweepDirError
from crdist.config import ConfigError, to_dict
from crdist.data.manifest import Manifest
from crdist.errors import CrdistError
from crdist.evaluate.metrics import summarize
from crdist.integrity import write_sealed_json
from crdist.report.matrices import ReportError
from crdist.rundir import RunDir, RunDirError
from tests.helpers import study

ACCURACY = {  # (row, task) → knn accuracy
    (0, 1): 0.5, (0, 2): 0.25, (1, 1): 0.875, (1, 2): 0.375, (2, 1): 0.625, (2, 2): 0.75,
}


@pytest.fixture(scope="module")
def two_task_shards(tmp_path_factory):
    """seq-digits in 2 tasks (2 s)."""
    from crdist.data.prepare import prepare

    out = tmp_path_factory.mktemp("shards") / "seq-digits-2"
    prepare(study(data={"shards": str(out), "tasks": 2}).data, log=lambda line: None)
    return out


def a_run(tmp_path, two_task_shards, rows=((0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2))) -> RunDir:
    """A run of 2 tasks, method sgd, protocol knn, whose evaluations of ``rows`` have finished."""
    cfg = study(name="partial", data={"tasks": 2, "shards": str(two_task_shards)}, train={"methods": ["sgd"]},
                evaluate={"protocols": ["knn"]})
    run = RunDir(tmp_path / "partial")
    run.root.mkdir()
    run.config_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    Manifest.load(two_task_shards).save(run.root)
    for row, task in rows:
        path = run.evaluation("sgd", row, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_sealed_json(path, {"accuracy": {"knn": ACCURACY[(row, task)]}})
    return run


def test_a_run_not_finished_has_nan_where_it_has_not_measured_and_no_summary_yet(tmp_path, two_task_shards):
    run = crdist.load_run(a_run(tmp_path, two_task_shards, rows=[(0, 1), (0, 2), (1, 1), (1, 2), (2, 1)]).root)
    assert (run.name, run.methods, run.protocols, run.tasks, run.finished) == ("partial", ["sgd"], ["knn"], 2, False)
    matrix = run.matrix("sgd", "knn")
    assert matrix.shape == (3, 2) and np.isnan(matrix[2, 1])
    assert matrix[1].tolist() == [0.875, 0.375]
    metrics = run.metrics()
    # No summary of an incomplete matrix; the final row's measured cell only.
    assert metrics.to_dict("records") == [
        {"method": "sgd", "protocol": "knn", "metric": FINAL_ACCURACY, "task": 1, "value": 0.625}]


def test_a_complete_matrix_is_summarised_as_the_report_would(tmp_path, two_task_shards):
    run = crdist.load_run(a_run(tmp_path, two_task_shards).root)
    summary = summarize([[ACCURACY[(i, j)] for j in (1, 2)] for i in (0, 1, 2)])
    metrics = run.metrics()
    summarised = metrics[metrics["task"].isna()]
    assert dict(zip(summarised["metric"], summarised["value"])) == summary
    final = metrics[metrics["metric"] == FINAL_ACCURACY]
    assert final["task"].tolist() == [1, 2] and final["value"].tolist() == [0.625, 0.75]


def test_write_report_builds_the_report_the_api_then_reads(tmp_path, two_task_shards):
    said = []
    run = crdist.write_report(a_run(tmp_path, two_task_shards).root, say=said.append)
    assert run.finished and said[0].startswith(f"report written to {run.path / 'report'}")
    reported = json.loads((run.path / "report" / "matrix_sgd_knn.json").read_text())["accuracy"]
    assert reported == run.matrix("sgd", "knn").tolist()
    metrics = run.metrics()  # now read from report/metrics.json
    summarised = metrics[metrics["task"].isna()]
    assert dict(zip(summarised["metric"], summarised["value"])) == json.loads(
        (run.path / "report" / "metrics.json").read_text())["sgd"]["knn"]


def test_a_damaged_evaluation_is_named_not_read(tmp_path, two_task_shards):
    run_dir = a_run(tmp_path, two_task_shards)
    path = run_dir.evaluation("sgd", 1, 2)
    path.write_text(path.read_text().replace("0.375", "0.999"))
    with pytest.raises(ReportError, match=r"1-2\.json: its content differs"):
        crdist.load_run(run_dir.root).matrix("sgd", "knn")


def test_what_is_not_a_run_or_a_sweep_is_a_crdist_error(tmp_path, two_task_shards):
    with pytest.raises(RunDirError, match="not a crdist run directory"):
        crdist.load_run(tmp_path)
    with pytest.raises(SweepDirError, match="not a sweep directory"):
        crdist.load_sweep(tmp_path)
    for call in (crdist.write_report, crdist.resume_run):
        with pytest.raises(RunDirError, match="not a crdist run directory"):
            call(tmp_path)
    run = crdist.load_run(a_run(tmp_path, two_task_shards).root)
    with pytest.raises(KeyError, match="no method 'lpft'; this run's methods: sgd"):
        run.matrix("lpft", "knn")
    with pytest.raises(KeyError, match="no protocol 'linear'"):
        run.matrix("sgd", "linear")


def test_running_a_study_with_a_bad_override_raises_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key .*did you mean 'train\.epochs'") as raised:
        crdist.run_study("configs/demo.yaml", overrides=["train.epoch=2", f"runs_dir={tmp_path}"])
    assert isinstance(raised.value, CrdistError) and list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="config file not found"):
        crdist.run_study(tmp_path / "missing.yaml")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nbase: missing.yaml\naxes: {seed: [0, 1]}\n")
    with pytest.raises(ConfigError, match="base: missing.yaml: no such config file"):
        crdist.run_sweep(sweep)


def test_import_crdist_stays_light():
    import subprocess
    import sys

    code = "import sys, crdist; crdist.load_run; print(json.dumps(sorted(m for m in ('torch', 'ray', 'pandas') if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
