"""Failures during a real study on real Ray, with real signals: killed workers of methods with
state (a replay buffer, importances), a stopped and a killed driver, a lost node, a node drained
for preemption. Each run must end bit-identical to the uninterrupted reference."""

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import psutil
import pytest
import torch

from crdist.bench.faults import checkpoint_on_disk, events, wait_for, worker_pid, worker_pid_file
from crdist.models.weights import load_weights
from crdist.train.checkpoint import TaskCheckpoints
from tests.helpers import ROOT
from tests.helpers.mlflow_server import mlflow_server
from tests.helpers.ray_clusters import new_temp_dir, ray_start, ray_stop
from tests.helpers.studies import (
    TENSORBOARD,
    command,
    finish,
    finished_once,
    journal,
    method_state,
    same,
    start,
    wait_until_gone,
)


def assert_same_results(run_dir, reference_dir, every_step_recorded=True, methods=None):
    """``run_dir`` ended exactly as ``reference_dir`` did, for ``methods`` (default: all of the
    reference's): matrices, weights, and the loss of every step."""
    methods = methods or sorted(p.name for p in (reference_dir / "models").iterdir() if p.is_dir())
    for method in methods:
        for path in sorted((reference_dir / "report").glob(f"matrix_{method}_*.json")):
            assert json.loads((run_dir / "report" / path.name).read_text()) == json.loads(path.read_text()), path.name
    for path in [reference_dir / "models" / "c_0.safetensors"] + [
            p for m in methods for p in sorted((reference_dir / "models" / m).glob("*.safetensors"))]:
        got, expected = load_weights(run_dir / path.relative_to(reference_dir)), load_weights(path)
        assert all(torch.equal(got[k], expected[k]) for k in expected), path.name
    # Every step trained, including steps trained again after a failure, has the reference's loss.
    # (A killed driver loses the progress events still on their way to it: those steps go unrecorded.)
    def key(e):
        return e["method"], e["task"], e["step"]

    reference = {key(e): e["loss"] for e in events(reference_dir) if e.get("kind") == "train" and e["method"] in methods}
    trained = [e for e in events(run_dir) if e.get("kind") == "train"]
    recorded = {key(e) for e in trained}
    assert recorded == set(reference) if every_step_recorded else recorded <= set(reference)
    assert all(e["loss"] == reference[key(e)] for e in trained)


def tensorboard_scalars(log_dir) -> dict:
    """tag → [(step, value)] in the order logged, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def scalars_of_events(run_dir) -> dict:
    """(tag, step) → value of every scalar the run's events stand for, the first occurrence of each."""
    from crdist.track.history import read_events
    from crdist.track.scalars import Plan, scalars_of

    recorded = [e.body for e in read_events(run_dir / "logs" / "events.jsonl")[0]]
    plan = Plan({(e["method"], e["task"]): e["steps"] for e in recorded if e.get("kind") == "start"})
    first = {}
    for event in recorded:
        for scalar in scalars_of(event, plan):
            first.setdefault((scalar.tag, scalar.step), scalar.value)
    return first


@contextmanager
def two_nodes(port: str):
    """A head and a second node (custom resource "node2", 2 CPUs each) on loopback; yields the
    address and the environment a driver joins with, and stops both nodes afterwards."""
    temp_dir = new_temp_dir()
    try:
        ray_start(temp_dir, "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false")
        ray_start(temp_dir, f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"node2": 1}')
        yield f"127.0.0.1:{port}", {**os.environ, "RAY_AUTH_MODE": "token"}
    finally:
        ray_stop(temp_dir)


def second_raylet() -> psutil.Process:
    raylets = [p for p in psutil.process_iter(["name", "cmdline"])
               if p.info["name"] == "raylet" and "node2" in " ".join(p.info["cmdline"] or [])]
    assert len(raylets) == 1
    return raylets[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("recovery")
    process = start(tmp_path, "reference", "train.methods=[lpft,der,ewc]")
    assert finish(process, timeout=900) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    return tmp_path, tmp_path / "runs" / "reference"


def test_workers_of_methods_with_state_killed_mid_task_resume_bit_identical(reference):
    """der keeps a replay buffer per rank, ewc a Fisher and an anchor: both carried from task 1 and
    saved in every checkpoint. A worker of each is SIGKILLed in task 2, with max_failures=0: Ray
    Train gives the method's job up, and the driver starts it again from task 2 (the job had
    finished task 1) on new workers, which resume from the checkpoint. The run ends as if nothing
    happened, states included. (Ray Train's own restart of a worker group is in the node tests.)"""
    tmp_path, reference_dir = reference
    run_dir = tmp_path / "runs" / "workers"
    process = start(tmp_path, "workers", "train.methods=[der,ewc]", "train.max_failures=0")
    killed = {}

    def kill_each_once():
        for method, rank in (("der", 1), ("ewc", 0)):
            if method not in killed and checkpoint_on_disk(run_dir, method, 2, 20)():
                os.kill(worker_pid(run_dir, method, 2, rank), signal.SIGKILL)
                killed[method] = rank
        return len(killed) == 2

    wait_for(kill_each_once, 600, "task 2 checkpoints of der and ewc", alive=process)
    assert finish(process, timeout=900) == 0, (tmp_path / "workers.log").read_text()[-3000:]

    finished = finished_once(run_dir)
    again = [(e["event"], e["job"], e.get("again", e.get("workers"))) for e in journal(run_dir)
             if e["event"] in ("failed", "started") and e["job"].endswith("/2")]
    for method in ("der", "ewc"):
        assert again.count(("failed", f"train/{method}/2", True)) == 1
        assert [w for _, job, w in again if job == f"train/{method}/2"] == ["kept", True, "new"]
        assert finished[f"train/{method}/2"]["resumed_from"] >= 20  # restarted within the same run
        assert any(e.get("kind") == "start" and e["method"] == method and e["task"] == 2 and e["step"] >= 20
                   for e in events(run_dir))
        for task in (1, 2):
            for rank in (0, 1):
                assert same(method_state(run_dir, method, task, rank), method_state(reference_dir, method, task, rank))
    assert_same_results(run_dir, reference_dir, methods=["der", "ewc"])

    # What the states hold: a reservoir per rank (half of the 256 samples each) over both tasks,
    # with stored logits; a Fisher that is the same on both ranks, anchored at c_2.
    for rank in (0, 1):
        buffer = method_state(run_dir, "der", 2, rank)["buffer"]
        assert len(buffer["labels"]) == 128 and buffer["logits"].shape == (128, 10)
        assert set(buffer["tasks"].tolist()) == {1, 2} and buffer["seen"] == 2 * 140 * 16
    ewc = [method_state(run_dir, "ewc", 2, rank) for rank in (0, 1)]
    assert same(ewc[0]["fisher"], ewc[1]["fisher"])
    weights = load_weights(run_dir / "models" / "ewc" / "c_2.safetensors")
    assert all(torch.equal(ewc[0]["anchor"][k], weights[k]) for k in ewc[0]["anchor"])


def test_the_driver_stopped_by_sigterm_then_killed_resumes_without_redoing_finished_jobs(reference):
    """...and feeds TensorBoard and a real MLflow tracking server each scalar once across the three
    driver runs, without writing the server's credentials anywhere."""
    tmp_path, reference_dir = reference
    run_dir = tmp_path / "runs" / "driver"
    with mlflow_server(tmp_path / "mlflow-server") as server:
        uri = server.uri
        stopped_killed_and_resumed(tmp_path, run_dir, reference_dir, uri)
        assert_mlflow_holds_each_scalar_once(uri, run_dir)
        assert_a_server_gone_mid_study_is_turned_off_with_one_warning(server, run_dir)
    # A server that is down at the start: one line naming it, before anything runs.
    down = subprocess.run(command(tmp_path, "driver", TENSORBOARD, *mlflow_at(uri)), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert down.stderr.strip().splitlines()[-1].startswith(f"crdist: error: tracking.mlflow_uri: no MLflow tracking "
                                                           f"server answers at {uri} (")
    # The server's token, in MLflow's own environment variable, was written nowhere.
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "mlflow-server" not in p.parts]
    assert not [p for p in written if MLFLOW_TOKEN.encode() in p.read_bytes()]


MLFLOW_TOKEN = "canary-mlflow-token-5d1c0b"


def mlflow_at(uri):
    return ["tracking.mlflow=true", f"tracking.mlflow_uri={uri}"]


def stopped_killed_and_resumed(tmp_path, run_dir, reference_dir, uri):
    trackers = [TENSORBOARD, *mlflow_at(uri)]
    env = {**os.environ, "MLFLOW_TRACKING_TOKEN": MLFLOW_TOKEN}  # MLflow's client sends it; the server ignores it

    # 1. SIGTERM to the driver: the train job checkpoints and the driver exits cleanly.
    first = start(tmp_path, "driver", *trackers, env=env)
    wait_for(checkpoint_on_disk(run_dir, "lpft", 1, 10), 300, "a checkpoint of task 1", alive=first)
    first.send_signal(signal.SIGTERM)
    assert finish(first, timeout=120) == 143
    log = (tmp_path / "driver.log").read_text()
    assert "stopped on SIGTERM" in log
    stop_checkpoint = max(e["step"] for e in events(run_dir) if e.get("kind") == "checkpoint" and e["stopping"])
    assert any(e["event"] == "stopped" and e["job"] == "train/lpft/1" for e in journal(run_dir))

    # 2. The same command continues; SIGKILL the driver in the middle of task 2.
    second = start(tmp_path, "driver", *trackers, env=env)
    # A second driver of the same run directory is refused while this one holds it. (Asked as soon
    # as it holds the directory: its start-up takes seconds, in which task 2 could have ended.)
    wait_for(lambda: sum(e["event"] == "run" for e in journal(run_dir)) == 2, 300, "the second driver's start",
             alive=second)
    intruder = subprocess.run(command(tmp_path, "driver", *trackers), cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env=env)
    assert intruder.returncode == 1
    assert f"in use by another crdist driver (pid {second.pid} on " in intruder.stderr
    wait_for(checkpoint_on_disk(run_dir, "lpft", 2, 10), 300, "a checkpoint of task 2", alive=second)
    workers = [worker_pid(run_dir, "lpft", 2, rank) for rank in (0, 1)]
    second.kill()
    second.wait()
    wait_until_gone(workers)  # the driver's embedded Ray cluster goes down with it
    try:
        os.killpg(second.pid, signal.SIGKILL)  # Ray's helper agents outlive it; tidy them up
    except ProcessLookupError:
        pass

    # 3. Once more: it finishes, redoing no finished job.
    assert finish(start(tmp_path, "driver", *trackers, env=env)) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finished = finished_once(run_dir)
    assert finished["train/lpft/1"]["resumed_from"] == stop_checkpoint
    assert finished["train/lpft/2"]["resumed_from"] >= 10
    assert finished.keys() == {"train/lpft/1", "train/lpft/2"} | {
        f"eval/{c}/{j}" for c in ("c_0", "lpft/c_1", "lpft/c_2") for j in (1, 2)
    }
    runs = [e for e in journal(run_dir) if e["event"] == "run"]
    assert [r["resumed"] for r in runs] == [False, True, True]
    assert_same_results(run_dir, reference_dir, every_step_recorded=False, methods=["lpft"])
    last_resume = finished["train/lpft/2"]["resumed_from"]
    task2 = {e["step"] for e in events(run_dir) if e.get("kind") == "train" and e["task"] == 2}
    assert set(range(last_resume + 1, 141)) <= task2  # the final run recorded every step it trained

    # TensorBoard, fed by all three driver runs, holds each scalar of events.jsonl once: the steps
    # that the resumed jobs trained again were not logged again.
    logged = tensorboard_scalars(run_dir / "tracking" / "tensorboard")
    for tag, points in logged.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice"
    want = scalars_of_events(run_dir)
    got = {(tag, step) for tag, points in logged.items() for step, _ in points}
    # A driver killed between writing an event to events.jsonl and flushing it to TensorBoard loses
    # that one write; the next driver takes it as logged. So at most one step's scalars may miss.
    assert got <= set(want) and len({step for _, step in set(want) - got}) <= 1
    assert all(value == pytest.approx(want[(tag, step)], rel=1e-6) for tag, points in logged.items()
               for step, value in points)
    assert {tag.split("/")[0] for tag in logged} == {"train", "eval", "report"}


def assert_mlflow_holds_each_scalar_once(uri, run_dir):
    """One MLflow run for the three driver runs, finished, with each scalar of events.jsonl once
    (less at most the one step a killed driver had not sent yet) and the report as artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("crdist").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "driver"
    assert run.data.tags["crdist.run_dir"] == str(run_dir.resolve())
    want = scalars_of_events(run_dir)
    got = {}
    for tag in {tag for tag, _ in want}:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, tag)]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice"
        got.update({(tag, m.step): m.value for m in client.get_metric_history(run.info.run_id, tag)})
    assert set(got) <= set(want) and len({step for _, step in set(want) - set(got)}) <= 1
    assert all(value == pytest.approx(want[key], rel=1e-6) for key, value in got.items())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/metrics.json", "report/matrix_lpft_knn.json"} <= artifacts
    print(f"MLflow: {len(got)} of {len(want)} scalars, {len(artifacts)} report files")


def assert_a_server_gone_mid_study_is_turned_off_with_one_warning(server, run_dir):
    """The tracker of a study whose server goes away: the next log fails within MLflow's retries
    (which crdist shortens), and the fan-out turns it off with one warning; the study would go on."""
    import time

    from crdist.track.fanout import Tracking
    from crdist.track.mlflow import MLflowTracker
    from crdist.track.scalars import Plan

    tracker = MLflowTracker(server.uri, "gone", "gone", run_dir)
    warnings = []
    tracking = Tracking([tracker], run_dir / "report", warnings.append)
    tracking.plan = Plan({("lpft", 1): 140})
    server.stop()  # gone mid-study
    started = time.monotonic()
    train = {"kind": "train", "job": "lpft/task-1", "method": "lpft", "task": 1, "tasks": 2, "phase": "train",
             "step": 1, "steps": 140, "epoch": 1, "loss": 1.0, "lr": 0.01, "samples_per_s": 1.0, "time": 0.0}
    tracking.record(train)
    tracking.record({**train, "step": 2})
    assert len(warnings) == 1 and "MLflow failed while logging" in warnings[0] and tracking.keys() == []
    assert time.monotonic() - started < 60


def test_a_study_across_two_nodes_survives_losing_one(reference):
    tmp_path, reference_dir = reference
    run_dir = tmp_path / "runs" / "nodes"
    with two_nodes("6391") as (address, env):
        process = start(tmp_path, "nodes", "train.placement=SPREAD", "cluster.address=" + address, env=env)
        wait_for(checkpoint_on_disk(run_dir, "lpft", 1, 20), 300, "a checkpoint of task 1", alive=process)
        raylet = second_raylet()
        doomed = [raylet, *raylet.children(recursive=True)]
        assert any("RayTrainWorker" in " ".join(p.cmdline()) for p in doomed[1:])  # a worker runs there
        for p in doomed:
            p.kill()
        assert finish(process) == 0, (tmp_path / "nodes.log").read_text()[-3000:]

    assert "2 nodes" in (tmp_path / "nodes.log").read_text()
    assert finished_once(run_dir)["train/lpft/1"]["resumed_from"] >= 20
    assert_same_results(run_dir, reference_dir, methods=["lpft"])


def test_a_node_drained_for_preemption_checkpoints_at_once_and_the_job_resumes_from_that_step(reference):
    """The advance notice of a preemption: the worker node is drained (what a cloud's spot reclaim,
    or `ray start --block` given SIGTERM, does), then killed. The job checkpoints as soon as Ray
    reports the drain, and restarts from that step; no periodic checkpoint falls inside the task
    (every 1000 steps), so that step can only be the drain's. The drain is sent as soon as the
    job's workers run (their pid file is written), and the notice polled every 0.2 s (by Ray's
    watcher too), so that it lands mid-task however fast the 140 steps train; the node goes the
    moment the checkpoint is on disk (its event reaches events.jsonl seconds later on a busy
    machine). max_failures=0: only Ray Train's preemption budget can restart it."""
    tmp_path, reference_dir = reference
    run_dir = tmp_path / "runs" / "drain"
    with two_nodes("6393") as (address, env):
        process = start(tmp_path, "drain", "train.placement=SPREAD", "cluster.address=" + address,
                        "checkpoint.every_steps=1000", "checkpoint.preemption_poll_seconds=0.2",
                        "train.max_failures=0", env=env)
        wait_for(lambda: worker_pid_file(run_dir, "lpft", 1, 0).is_file(), 300, "task 1's workers", alive=process)
        raylet = second_raylet()
        node_id = next(a.split("=", 1)[1] for a in raylet.cmdline() if a.startswith("--node_id="))
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "drain-node", f"--address={address}",
                        f"--node-id={node_id}", "--reason=DRAIN_NODE_REASON_PREEMPTION",
                        "--reason-message=spot instance reclaimed", "--deadline-remaining-seconds=60"],
                       env=env, check=True, capture_output=True, timeout=60)
        wait_for(checkpoint_on_disk(run_dir, "lpft", 1, 1), 120, "the checkpoint for the drain", alive=process)
        # The step of the drain's checkpoint, from disk: its progress event comes from rank 0, which
        # may be on the node about to go, before it is sent.
        drain_step = int(TaskCheckpoints(run_dir / "checkpoints" / "lpft" / "task-1").latest().name.removeprefix("step-"))
        for p in [raylet, *raylet.children(recursive=True)]:  # the node goes, as a reclaimed VM does
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        assert finish(process) == 0, (tmp_path / "drain.log").read_text()[-3000:]

    assert 1 <= drain_step < 140  # mid-task, and no periodic checkpoint there to resume from instead
    restarts = [e for e in events(run_dir) if e.get("kind") == "start" and (e["method"], e["task"]) == ("lpft", 1)]
    assert [e["step"] for e in restarts] == [0, drain_step]  # resumed from the step of the drain
    assert finished_once(run_dir)["train/lpft/1"]["resumed_from"] == drain_step
    saved = [e for e in events(run_dir) if e.get("kind") == "checkpoint" and e.get("preempted_nodes")]
    assert all((e["method"], e["task"], e["step"], e["preempted_nodes"]) == ("lpft", 1, drain_step, [node_id])
               for e in saved)
    if saved:  # the driver says why it checkpointed, when the event arrived
        assert "is being preempted" in (tmp_path / "drain.log").read_text()
    assert_same_results(run_dir, reference_dir, methods=["lpft"])
    past = [e for e in events(run_dir) if e.get("kind") == "train" and (e["method"], e["task"]) == ("lpft", 1)
            and e["step"] > drain_step and e["time"] < restarts[1]["time"]]
    print(f"\ndrain checkpoint at step {drain_step}; steps redone after the restart: {len(past)} trained past the "
          f"checkpoint before the node went, 0 before it")
