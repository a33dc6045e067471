"""The whole path through real Ray: `crdist run` on a shortened study writes every report file."""

import csv
import json
import subprocess
import sys

import pytest

import crdist
from crdist.api import FINAL_ACCURACY
from crdist.bench import overhead
from crdist.evaluate.metrics import summarize
from tests.helpers import ROOT, fixtures

METHODS = ["sgd", "lpft", "frozen"]
PROTOCOLS = ["knn", "linear", "finetune"]


def study_sets(tmp_path):
    return [
        "name=short", f"runs_dir={tmp_path / 'runs'}", f"data.shards={tmp_path / 'shards'}", "data.tasks=2",
        "train.epochs=1", "train.max_steps=6", "train.log_every=3", "train.zero_stage=3",
        "evaluate.finetune.steps=5", "evaluate.finetune.repeats=2", f"train.methods=[{','.join(METHODS)}]",
    ]


def crdist_run(tmp_path, *overrides):
    args = [*study_sets(tmp_path), *overrides]
    command = [sys.executable, "-m", "crdist", "run"] + [x for a in args for x in ("--set", a)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("e2e")
    result = crdist_run(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp_path, result


@pytest.mark.smoke
def test_a_short_study_through_ray_writes_every_report_file(finished_run):
    tmp_path, result = finished_run
    run = tmp_path / "runs" / "short"
    report = run / "report"
    expected = {"metrics.json", "report.md"} | {
        f"matrix_{m}_{p}.{ext}" for m in METHODS for p in PROTOCOLS for ext in ("csv", "json", "png")
    }
    assert expected <= {p.name for p in report.iterdir()}
    assert (run / "config.yaml").is_file() and (run / "logs" / "driver.log").is_file()
    assert len(list((run / "eval").rglob("*.json"))) == (1 + 3 * 2) * 2  # (c_0 + 3 methods × 2 tasks) × 2 tasks

    metrics = json.loads((report / "metrics.json").read_text())
    for method in METHODS:
        summary = json.loads((run / "models" / method / "c_2.train.json").read_text())
        steps = 0 if method == "frozen" else 6
        assert (summary["engine"], summary["world"], summary["zero_stage"], summary["steps"]) == ("DEEPSPEED", 2, 3, steps)
        for protocol in PROTOCOLS:
            with open(report / f"matrix_{method}_{protocol}.csv") as f:
                rows = list(csv.reader(f))
            assert rows[0] == ["checkpoint", "task 1", "task 2"]
            assert [r[0] for r in rows[1:]] == ["c_0", "c_1", "c_2"]
            matrix = [[float(v) for v in r[1:]] for r in rows[1:]]
            assert all(0.0 <= v <= 1.0 for row in matrix for v in row)
            data = json.loads((report / f"matrix_{method}_{protocol}.json").read_text())
            for row_json, row_csv in zip(data["accuracy"], matrix, strict=True):
                assert row_json == pytest.approx(row_csv, abs=1e-4)
            assert metrics[method][protocol] == pytest.approx(summarize(data["accuracy"]))
        assert (report / f"matrix_{method}_knn.png").read_bytes()[:4] == b"\x89PNG"
    # Row 0 is the one shared initial model: identical for every method.
    first_rows = {m: json.loads((report / f"matrix_{m}_knn.json").read_text())["accuracy"][0] for m in METHODS}
    assert first_rows["sgd"] == first_rows["lpft"] == first_rows["frozen"]
    # Common random numbers: every evaluation of a task draws the same numbers whatever the row, so
    # frozen (every c_i is c_0) scores c_0's row again in every row and forgets exactly nothing.
    for protocol in PROTOCOLS:
        frozen = json.loads((report / f"matrix_frozen_{protocol}.json").read_text())
        assert all(row == frozen["accuracy"][0] for row in frozen["accuracy"]), protocol
        assert metrics["frozen"][protocol]["average_forgetting"] == 0.0
        assert metrics["frozen"][protocol]["lump_forgetting"] == 0.0
        assert metrics["frozen"][protocol]["backward_transfer"] == 0.0
    # ...so its evaluations are c_0's, taken rather than computed again.
    assert {json.loads(p.read_text()).get("same_weights_as") for p in (run / "eval" / "frozen").glob("*.json")} == {"c_0"}
    assert all(json.loads(p.read_text()).get("same_weights_as") is None for p in (run / "eval" / "sgd").glob("*.json"))
    # Fine-tuning is averaged over evaluate.finetune.repeats=2 draws, each recorded with its spread.
    finetune = json.loads((report / "matrix_sgd_finetune.json").read_text())
    assert finetune["repeats"] == 2
    for cells, stds, accuracies in zip(finetune["draws"], finetune["draw_std"], finetune["accuracy"], strict=True):
        for draws, std, accuracy in zip(cells, stds, accuracies, strict=True):
            assert len(draws) == 2 and sum(draws) / 2 == pytest.approx(accuracy)
            assert std == pytest.approx(abs(draws[0] - draws[1]) / 2**0.5)
    assert "repeats" not in json.loads((report / "matrix_sgd_knn.json").read_text())

    out = result.stdout
    assert "train  sgd task 1/2  step" in out and "train  lpft task 2/2 done" in out
    assert "eval   lpft/c_2 on tasks 1–2" in out
    assert "protocol  method  avg acc" in out and "| lpft |" in (report / "report.md").read_text()
    assert "worker processes have been started" not in out

    # The cluster (3 CPUs) trains one job of 2 workers at a time, so the three methods share one
    # Ray Train job: its workers, started for sgd's task 1, trained every task after it, in order.
    journal = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    started = [(e["job"], e["workers"], e.get("after")) for e in journal
               if e["event"] == "started" and e["job"].startswith("train/")]
    chain = [f"{m}/{t}" for m in METHODS for t in (1, 2)]
    assert started == [(f"train/{chain[0]}", "new", None)] + [
        (f"train/{task}", "kept", before) for before, task in zip(chain, chain[1:])]
    for rank in (0, 1):
        pids = {(run / "logs" / "train" / f"{m}-task{t}-rank{rank}.pid").read_text() for m in METHODS for t in (1, 2)}
        assert len(pids) == 1


# The same study through the Python API, in a process of its own: what it returns, or the
# exception it raises (the last line of output, as JSON).
API_RUN = """
import json, sys
import crdist
from crdist.errors import CrdistError
try:
    run = crdist.run_study(overrides=sys.argv[1:])
except CrdistError as err:
    print(json.dumps({"raised": type(err).__name__, "message": str(err)}))
else:
    print(json.dumps({"path": str(run.path), "finished": run.finished}))
"""


def api_run(tmp_path, *overrides):
    sets = [*study_sets(tmp_path), *overrides]
    result = subprocess.run([sys.executable, "-c", API_RUN, *sets], capture_output=True, text=True, cwd=ROOT,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


def test_rerunning_reuses_finished_jobs_and_a_changed_config_is_refused(finished_run):
    tmp_path, _ = finished_run
    # Through the Python API: the finished run is continued, nothing trains again, the run returned.
    out, returned = api_run(tmp_path)
    assert "(continuing)" in out and "already done" in out
    assert " step " not in out  # no training step ran again
    assert returned == {"path": str(tmp_path / "runs" / "short"), "finished": True}

    changed = crdist_run(tmp_path, "train.max_steps=7")
    assert changed.returncode == 1
    assert "was started with a different config" in changed.stderr and "max_steps" in changed.stderr
    # The API raises crdist's exception instead of exiting.
    _, raised = api_run(tmp_path, "train.max_steps=7")
    assert raised["raised"] == "RunDirError" and "was started with a different config" in raised["message"]


@pytest.mark.smoke
def test_the_python_api_reads_the_run_as_its_report_files_hold_it(finished_run):
    tmp_path, _ = finished_run
    path = tmp_path / "runs" / "short"
    run = crdist.load_run(path)
    assert (run.finished, run.methods, run.protocols, run.tasks) == (True, METHODS, PROTOCOLS, 2)
    reported = json.loads((path / "report" / "metrics.json").read_text())
    tidy = run.metrics()
    for method in METHODS:
        for protocol in PROTOCOLS:
            accuracy = json.loads((path / "report" / f"matrix_{method}_{protocol}.json").read_text())["accuracy"]
            assert run.matrix(method, protocol).tolist() == accuracy
            rows = tidy[(tidy["method"] == method) & (tidy["protocol"] == protocol)]
            summary = rows[rows["task"].isna()]
            assert dict(zip(summary["metric"], summary["value"])) == reported[method][protocol]
            final = rows[rows["metric"] == FINAL_ACCURACY]
            assert final["task"].tolist() == [1, 2] and final["value"].tolist() == accuracy[-1]
    # The journal's train and eval jobs, in its order, each with what the journal says of it.
    journal = [json.loads(line) for line in (path / "journal.jsonl").read_text().splitlines()]
    jobs = [e for e in journal if e.get("job", "").split("/")[0] in ("train", "eval")]
    events = run.events()
    assert list(zip(events["event"], events["job"])) == [(e["event"], e["job"]) for e in jobs]
    trained = events[(events["kind"] == "train") & (events["event"] == "finished")]
    assert sorted(zip(trained["method"], trained["task"], trained["steps"])) == sorted(
        (m, t, 0 if m == "frozen" else 6) for m in METHODS for t in (1, 2))
    evaluated = events[(events["kind"] == "eval") & (events["event"] == "finished")]
    assert sorted(evaluated["checkpoint"]) == sorted(["c_0"] * 2 + [f"{m}/c_{i}" for m in METHODS for i in (1, 2)] * 2)
    steps = run.train_steps()
    logged = [e for e in map(json.loads, (path / "logs" / "events.jsonl").read_text().splitlines())
              if e.get("body", e).get("kind") == "train"]
    assert len(steps) == len(logged) and set(steps["method"]) == {"sgd", "lpft"}


def run_config(config, tmp_path, *overrides):
    sets = [f"runs_dir={tmp_path / 'runs'}", f"data.shards={tmp_path / 'shards'}", "train.methods=[lpft]",
            "data.tasks=2", "train.max_steps=5", "evaluate.finetune.steps=5", *overrides]
    command = [sys.executable, "-m", "crdist", "run", str(ROOT / config)] + [x for a in sets for x in ("--set", a)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)


def test_the_fashion_mnist_config_runs_on_the_real_debian_files(tmp_path):
    # Shortened for 2 CPU cores: 2 tasks, 5 steps each, and the small CNN instead of ResNet-18.
    result = run_config("configs/seq_fashion_mnist.yaml", tmp_path, "model.backbone=small-cnn")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "12,000 train" not in result.stdout  # 2 of 5 tasks: 24,000 train images
    assert "seq-fashion-mnist: 2 tasks, 10 classes, 24,000 train / 4,000 test" in result.stdout
    metrics = json.loads((tmp_path / "runs" / "seq-fashion-mnist" / "report" / "metrics.json").read_text())
    assert set(metrics["lpft"]) == set(PROTOCOLS)


def test_a_text_study_runs_with_a_local_encoder_and_its_tokenizer(tmp_path):
    fixtures.sentiment(tmp_path / "raw")
    model = fixtures.tiny_bert(tmp_path / "bert")
    result = run_config("configs/sentiment_domains.yaml", tmp_path, f"model.pretrained={model}",
                        f"data.root={tmp_path / 'raw'}", "data.adapt_per_class=2", "data.test_fraction=0.25",
                        "train.batch_size=2", "model.max_length=16")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 tasks (tweets, movieReviewSnippets)" in result.stdout and ", text" in result.stdout
    run = tmp_path / "runs" / "sentiment-domains"
    summary = json.loads((run / "models" / "lpft" / "c_2.train.json").read_text())
    assert summary["steps"] >= 1 and summary["engine"] == "DEEPSPEED"
    assert len(list((run / "eval").rglob("*.json"))) == (1 + 2) * 2


def test_the_wall_time_split_of_a_real_run_adds_up(finished_run):
    tmp_path, _ = finished_run
    run = tmp_path / "runs" / "short"
    figures = overhead.analyse(run)
    trains = [json.loads(p.read_text()) for p in (run / "models").glob("*/c_*.train.json")]
    # 3 methods × 2 tasks on one Ray Train job (the cluster trains one at a time); frozen's
    # evaluations are c_0's (no job): c_0, sgd's and lpft's c_1 and c_2, each on 2 tasks.
    assert figures["train_tasks"] == len(trains) == 6 and figures["train_jobs"] == 1 and figures["eval_jobs"] == 10
    assert figures["train_compute_seconds"] == pytest.approx(sum(t["seconds"] for t in trains))
    for part in ("train_start_seconds", "train_engine_seconds", "train_compute_seconds", "train_end_seconds",
                 "eval_seconds", "wall_with_neither"):
        assert figures[part] > 0, part
    # Unions over the wall clock: never more than the wall, never less than their largest part.
    assert figures["wall_with_training_compute"] <= figures["wall_with_either"] <= figures["wall_seconds"]
    assert figures["wall_with_evaluation"] <= figures["wall_with_either"]
    # Each task's pieces sit inside its journal interval: submitted ≤ entered ≤ first step ≤ finished.
    _, _, spans, _ = overhead.spans(run)
    for s in spans:
        assert s.submitted <= s.entered <= s.first_step <= s.first_step + s.compute <= s.finished, s
    assert 0 < figures["next_task_seconds_median"] < figures["job_ready_seconds_min"]  # kept workers start sooner
    png = run / "report" / "timeline.png"
    overhead.plot_timeline(run, png)
    assert png.stat().st_size > 10_000
