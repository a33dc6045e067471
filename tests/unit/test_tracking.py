"""The tracking: section: progress events reach TensorBoard, MLflow and W&B (offline) as scalars,
each (tag, step) once, also when a killed run is resumed; read back with each package's reader."""

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from crdist.config import ConfigError
from crdist.orchestrate.claim import admit
from crdist.orchestrate.console import Console
from crdist.rundir import RunDir
from crdist.track.config import TrackingConfig
from crdist.track.fanout import Tracking, TrackingError
from crdist.track.history import read_events
from crdist.track.scalars import Plan, scalars_of
from tests.helpers import study

# Two methods, two tasks; sgd's tasks are 20 steps, lpft's 20 and 15 (planned by the driver).
PLAN = Plan({("sgd", 1): 20, ("sgd", 2): 20, ("lpft", 1): 20, ("lpft", 2): 15})
PROTOCOLS = ("knn", "linear")


def train(method, task, step, loss):
    steps = PLAN.steps[(method, task)]
    return {"kind": "train", "job": f"{method}/task-{task}", "method": method, "task": task, "tasks": 2,
            "phase": "train", "step": step, "steps": steps, "epoch": 1, "loss": loss, "lr": 0.01 * step,
            "samples_per_s": 100.0 + step, "time": 1.0e9 + step}


def start(method, task, step):
    return {"kind": "start", "job": f"{method}/task-{task}", "method": method, "task": task, "tasks": 2,
            "step": step, "steps": PLAN.steps[(method, task)], "time": 1.0e9}


def train_done(method, task, seconds, resumed_from=None):
    return {"kind": "train_done", "job": f"{method}/task-{task}", "world": 2, "steps": PLAN.steps[(method, task)],
            "first_loss": 2.0, "final_loss": 0.5, "seconds": seconds, "samples_per_second": 320.0 / seconds,
            "resumed_from": resumed_from, "stopped": False, "method": method, "task": task}


def eval_done(checkpoint, row, task, base):
    return {"kind": "eval_done", "checkpoint": checkpoint, "row": row, "task": task,
            "accuracy": {p: base + 0.01 * k for k, p in enumerate(PROTOCOLS)}, "adapt_samples": 60,
            "test_samples": 108, "seconds": 0.5}


# lpft/c_1 on task 2 finishes last, after lpft/c_2 on task 2 (evaluations run concurrently).
EARLY_C1_EVALS = [("sgd", 1), ("sgd", 2), ("lpft", 1)]


def killed_run():
    """A first driver run, killed in sgd's task 2 after its checkpoint at step 10 and step 15."""
    return [
        eval_done("c_0", 0, 1, 0.50), eval_done("c_0", 0, 2, 0.40),
        start("sgd", 1, 0), start("lpft", 1, 0),
        *[train(m, 1, s, 2.0 / s) for s in (5, 10, 15, 20) for m in ("sgd", "lpft")],
        train_done("sgd", 1, 4.0), train_done("lpft", 1, 5.0),
        *[eval_done(f"{m}/c_1", 1, j, 0.60 + 0.1 * j) for m, j in EARLY_C1_EVALS],
        start("sgd", 2, 0), train("sgd", 2, 5, 1.5), train("sgd", 2, 10, 1.4),
        {"kind": "checkpoint", "job": "sgd/task-2", "method": "sgd", "task": 2, "tasks": 2, "step": 10,
         "stopping": False, "time": 1.0e9},
        train("sgd", 2, 15, 1.3),
    ]


def resumed_run():
    """The run resumed: finished evaluations reported again from their files, sgd's task 2 resumed
    from step 10 (its step 15 trained again, with another loss as far as a tracker can tell)."""
    return [
        eval_done("c_0", 0, 1, 0.50), eval_done("c_0", 0, 2, 0.40),
        *[eval_done(f"{m}/c_1", 1, j, 0.60 + 0.1 * j) for m, j in EARLY_C1_EVALS],
        start("sgd", 2, 10), train("sgd", 2, 15, 9.9), train("sgd", 2, 20, 1.2), train_done("sgd", 2, 3.0, 10),
        start("lpft", 2, 0), train("lpft", 2, 5, 1.1), train("lpft", 2, 10, 1.0), train("lpft", 2, 15, 0.9),
        train_done("lpft", 2, 2.0),
        *[eval_done(f"{m}/c_2", 2, j, 0.70 + 0.05 * j) for m in ("sgd", "lpft") for j in (1, 2)],
        eval_done("lpft/c_1", 1, 2, 0.80),  # after lpft/c_2's evaluation of task 2: out of order, still logged
        {"kind": "report", "tasks": 2, "metrics": {
            m: {p: {"average_accuracy": 0.8, "average_forgetting": 0.05, "lump_forgetting": None} for p in PROTOCOLS}
            for m in ("sgd", "lpft")}},
    ]


def drive(run: RunDir, config: TrackingConfig, events: list[dict], outcome="finished") -> None:
    """One driver run: its console records ``events``, fed to the trackers as the driver feeds them."""
    from crdist.orchestrate.driver import _feed_trackers

    console = Console(run.logs)
    tracking = Tracking.open(config, "study", run, console.print)
    try:
        _feed_trackers(tracking, PLAN.steps, run, console)
        for event in events:
            console.record(event)
    finally:
        if tracking is not None:
            tracking.close(outcome)
        console.close()


@pytest.fixture
def run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "study")
    run.logs.mkdir(parents=True)
    run.report.mkdir()
    (run.report / "report.md").write_text("# study\n\n| method | avg acc |\n|---|---:|\n| sgd | 0.800 |\n")
    (run.report / "matrix_sgd_knn.json").write_text(json.dumps({"accuracy": [[0.5, 0.4], [0.7, 0.8]]}))
    from PIL import Image

    Image.new("RGB", (8, 6), (200, 30, 30)).save(run.report / "matrix_sgd_knn.png")
    return run


def expected(run: RunDir) -> dict:
    """(tag, step) → value: every event's scalars, the first occurrence of each (tag, step)."""
    first = {}
    for event in read_events(run.logs / "events.jsonl")[0]:
        for s in scalars_of(event.body, PLAN):
            first.setdefault((s.tag, s.step), s.value)
    return first


# -- the mapping -----------------------------------------------------------------------------------


def test_events_map_to_tags_at_their_steps():
    loss, lr, speed = scalars_of(train("lpft", 2, 5, 1.1), PLAN)
    assert (loss.tag, loss.step, loss.value) == ("train/lpft/loss", 25, 1.1)  # lpft's task 1 planned 20 steps
    assert (lr.tag, speed.tag) == ("train/lpft/lr", "train/lpft/samples_per_s")
    done = {s.tag: (s.step, s.value) for s in scalars_of(train_done("sgd", 2, 4.0), PLAN)}
    assert done == {"train/sgd/task_samples_per_s": (2, 80.0), "train/sgd/task_seconds": (2, 4.0)}
    old = {k: v for k, v in train_done("sgd", 2, 4.0).items() if k not in ("method", "task")}
    assert {s.tag for s in scalars_of(old, PLAN)} == set(done)  # events of earlier runs name the job only
    c0 = {(s.tag, s.step) for s in scalars_of(eval_done("c_0", 0, 2, 0.4), PLAN)}
    assert c0 == {(f"eval/{m}/{p}/task-2", 0) for m in ("sgd", "lpft") for p in PROTOCOLS}  # under every method
    c1 = scalars_of(eval_done("lpft/c_1", 1, 2, 0.8), PLAN)
    assert [(s.tag, s.step, s.value) for s in c1] == [("eval/lpft/knn/task-2", 1, 0.8),
                                                     ("eval/lpft/linear/task-2", 1, 0.81)]
    report = {s.tag: s.step for s in scalars_of(resumed_run()[-1], PLAN)}
    assert report["report/sgd/knn/average_accuracy"] == 2 and "report/sgd/knn/lump_forgetting" not in report
    assert scalars_of(start("sgd", 1, 0), PLAN) == [] and scalars_of({"kind": "tracking", "trackers": []}, PLAN) == []


# -- each tracker, read back with its own package --------------------------------------------------


def tensorboard_scalars(run: RunDir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(run.tracking / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    reader.Reload()
    return reader, {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def check_logged_once(series: dict, want: dict, close) -> None:
    """``series`` (tag → [(step, value)] in logged order) holds exactly ``want``, each step once."""
    for tag, points in series.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{tag}: steps {steps}"
    got = {(tag, step): value for tag, points in series.items() for step, value in points}
    assert got.keys() == want.keys()
    wrong = [(key, got[key], want[key]) for key in want if not close(got[key], want[key])]
    assert not wrong


def float32_equal(a, b) -> bool:
    return np.float32(a) == np.float32(b)  # TensorBoard keeps scalars as 32-bit floats


def test_tensorboard_gets_each_step_once_across_a_resumed_run(run):
    config = TrackingConfig(tensorboard=True)
    drive(run, config, killed_run(), outcome="stopped")
    _, first = tensorboard_scalars(run)
    check_logged_once(first, expected(run), float32_equal)
    drive(run, config, resumed_run())

    reader, series = tensorboard_scalars(run)
    want = expected(run)
    check_logged_once(series, want, float32_equal)
    assert dict(series["train/sgd/loss"])[35] == pytest.approx(1.3)  # the killed run's step 15 of task 2 stays
    assert [step for step, _ in series["train/sgd/loss"]] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [step for step, _ in series["eval/lpft/linear/task-1"]] == [0, 1, 2]
    assert len(list((run.tracking / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per driver run
    assert "report/text_summary" in reader.Tags()["tensors"]
    assert reader.Tags()["images"] == ["report/matrix_sgd_knn"]


def test_mlflow_continues_the_same_run_and_gets_each_step_once(run, monkeypatch):
    from mlflow.tracking import MlflowClient

    config = TrackingConfig(mlflow=True)
    drive(run, config, killed_run(), outcome="stopped")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # how MLflow 3.17 reads a file store
    client = MlflowClient((run.tracking / "mlflow").resolve().as_uri())
    (first,) = client.search_runs([client.get_experiment_by_name("crdist").experiment_id])
    assert first.info.status == "KILLED" and first.info.run_name == "study"
    drive(run, config, resumed_run())

    experiment = client.get_experiment_by_name("crdist").experiment_id
    (again,) = client.search_runs([experiment])
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["crdist.run_dir"] == str(run.root.resolve())
    want = expected(run)
    series = {tag: [(m.step, m.value) for m in client.get_metric_history(again.info.run_id, tag)]
              for tag in {tag for tag, _ in want}}
    check_logged_once(series, want, lambda a, b: a == b)
    assert {a.path for a in client.list_artifacts(again.info.run_id, "report")} == {
        "report/report.md", "report/matrix_sgd_knn.json", "report/matrix_sgd_knn.png"}


def test_an_mlflow_server_that_does_not_answer_stops_the_study_at_its_start_in_one_line(run):
    import socket
    import time

    from crdist.track.mlflow import ServerDown

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(ServerDown, match=rf"^tracking\.mlflow_uri: no MLflow tracking server answers at {uri} \(") as raised:
        Tracking.open(TrackingConfig(mlflow=True, mlflow_uri=uri), "study", run, warn=pytest.fail)
    assert "\n" not in str(raised.value) and time.monotonic() - started < 15
    assert not (run.tracking / "mlflow").exists()


def wandb_records(path: Path):
    """The records of a W&B offline run file (run-<id>.wandb): W&B's own protobuf records, in the
    LevelDB log format that W&B writes them in (32 KiB blocks of checksummed, typed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(run: RunDir) -> tuple[list[str], list[dict]]:
    """The run ids and history rows of every offline run directory, in the order they were written."""
    ids, rows = [], []
    for directory in sorted((run.tracking / "wandb").glob("offline-run-*")):
        for record in wandb_records(next(directory.glob("run-*.wandb"))):
            if record.HasField("run"):
                ids.append(record.run.run_id)
            if record.HasField("history"):
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return ids, rows


def wandb_series(rows: list[dict]) -> dict:
    """tag → [(its own step, value)]: each tag is logged beside its step metric."""
    axes = {"loss": "step", "lr": "step", "samples_per_s": "step", "task_samples_per_s": "task", "task_seconds": "task"}
    series = {}
    for row in rows:
        for key, value in row.items():
            parts = key.split("/")
            if key.startswith("_") or parts[-1] in ("step", "task", "checkpoint", "tasks"):
                continue
            if parts[0] == "train":
                axis = f"train/{parts[1]}/{axes[parts[2]]}"
            elif parts[0] == "eval":
                axis = f"eval/{parts[1]}/checkpoint"
            else:
                axis = "report/tasks"
            series.setdefault(key, []).append((row[axis], value))
    return series


def test_wandb_offline_continues_the_same_run_and_gets_each_step_once(run, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = TrackingConfig(wandb=True, wandb_project="tests")
    drive(run, config, killed_run(), outcome="stopped")
    drive(run, config, resumed_run())

    ids, rows = wandb_history(run)
    assert len(ids) == 2 and ids[0] == ids[1]  # two offline directories of one W&B run
    steps = [row["_step"] for row in rows]
    assert steps == sorted(set(steps))  # W&B's own step only grows, across the resumed run too
    check_logged_once(wandb_series(rows), expected(run), lambda a, b: a == b)
    (latest,) = [d for d in (run.tracking / "wandb").glob("offline-run-*") if (d / "files" / "report").is_dir()]
    assert {p.name for p in (latest / "files" / "report").iterdir()} == {
        "report.md", "matrix_sgd_knn.json", "matrix_sgd_knn.png"}
    assert "WANDB_MODE" not in os.environ  # offline only while the tracker was open


# -- the fan-out's rules ---------------------------------------------------------------------------


def test_a_tracker_turned_on_mid_study_gets_the_whole_history_and_a_rerun_adds_nothing(run):
    drive(run, TrackingConfig(), killed_run())  # no tracker: the file still notes that
    assert read_events(run.logs / "events.jsonl")[0][0].body["trackers"] == []
    config = TrackingConfig(tensorboard=True)
    drive(run, config, resumed_run())
    check_logged_once(tensorboard_scalars(run)[1], expected(run), float32_equal)
    drive(run, config, resumed_run())  # a finished study run again reports everything again
    check_logged_once(tensorboard_scalars(run)[1], expected(run), float32_equal)


def test_a_failing_tracker_is_turned_off_with_one_warning_and_the_others_go_on(run):
    warnings = []
    console = Console(run.logs)
    tracking = Tracking.open(TrackingConfig(tensorboard=True, wandb=True), "study", run, warnings.append)
    tracking.begin(PLAN, run.logs / "events.jsonl", console.record)
    console.follow(tracking.record)
    events = killed_run()
    for event in events[:5]:
        console.record(event)
    wandb_tracker = next(feed.tracker for feed in tracking.feeds if feed.tracker.key == "wandb")
    wandb_tracker.run.finish()  # W&B refuses to log to a finished run
    for event in events[5:]:
        console.record(event)
    tracking.close("finished")
    console.close()
    assert len(warnings) == 1 and warnings[0].startswith("warn   W&B failed while logging")
    assert "the study goes on" in warnings[0]
    check_logged_once(tensorboard_scalars(run)[1], expected(run), float32_equal)


def test_a_missing_tracker_package_stops_the_study_with_the_install_command(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what Python does for a package that is not there
    with pytest.raises(TrackingError, match=r"tracking\.wandb is on, but wandb cannot be imported .*"
                                            r"pip install 'crdist\[tracking\]'"):
        Tracking.open(TrackingConfig(tensorboard=True, wandb=True), "study", run, print)


def test_a_half_written_last_line_of_a_killed_driver_is_skipped_and_never_merged(run):
    (run.logs / "events.jsonl").write_text('{"kind": "tracking", "trackers": []}\n{"kind": "tra')
    console = Console(run.logs)
    console.record({"kind": "tracking", "trackers": ["tensorboard"]})
    console.close()
    events, next_number = read_events(run.logs / "events.jsonl")
    assert [(e.number, e.body["trackers"]) for e in events] == [(1, []), (3, ["tensorboard"])]
    assert next_number == 4


# -- the config section ----------------------------------------------------------------------------


def test_the_tracking_section_is_checked_and_may_change_when_a_run_resumes(tmp_path):
    assert study().tracking == TrackingConfig() and TrackingConfig().enabled() == []
    assert study(tracking={"tensorboard": True, "wandb": True}).tracking.enabled() == ["tensorboard", "wandb"]
    for uri in ("http://localhost:5000", "https://mlflow.internal", "file:///data/mlruns"):
        assert study(tracking={"mlflow": True, "mlflow_uri": uri}).tracking.mlflow_uri == uri
    with pytest.raises(ConfigError, match=r"^test: tracking\.mlflow_uri: must be an http\(s\):// tracking server"):
        study(tracking={"mlflow": True, "mlflow_uri": "sqlite:///mlruns.db"})
    with pytest.raises(ConfigError, match=r"tracking\.mlflow_uri: must not hold credentials .* MLFLOW_TRACKING_USERNAME"):
        study(tracking={"mlflow": True, "mlflow_uri": "https://me:secret@mlflow.internal"})
    with pytest.raises(ConfigError, match=r"tracking\.wandb_project: must be 1 to 128 characters"):
        study(tracking={"wandb": True, "wandb_project": "team/project"})
    with pytest.raises(ConfigError, match=r"tracking\.tensorbord: unknown key .*did you mean 'tracking\.tensorboard'"):
        study(tracking={"tensorbord": True})
    run = RunDir(tmp_path / "run")
    assert admit(run, study()) is False
    assert admit(run, study(tracking={"tensorboard": True, "mlflow": True})) is True  # where progress goes only
