"""Failures during a real study on real Ray, with real signals: a killed worker, a stopped and a
killed driver, a lost node. Each run must end bit-identical to the uninterrupted reference."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from crdist.bench.faults import checkpoint_at_least, events, wait_for, worker_pid
from crdist.models.weights import load_weights
from tests.conftest import ROOT

# Long enough tasks (140 steps) that every failure below lands mid-task; checkpoints every 10 steps.
STUDY = [
    "data.tasks=2", "train.methods=[lpft]", "train.epochs=20", "train.log_every=1",
    "checkpoint.every_steps=10", "evaluate.finetune.steps=5",
]


def command(tmp_path, name, *extra):
    sets = [*STUDY, f"name={name}", f"runs_dir={tmp_path / 'runs'}", f"data.shards={tmp_path / 'shards'}", *extra]
    return [sys.executable, "-m", "crdist", "run"] + [x for s in sets for x in ("--set", s)]


def start(tmp_path, name, *extra, env=None):
    log = open(tmp_path / f"{name}.log", "a")
    return subprocess.Popen(command(tmp_path, name, *extra), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def finish(process, timeout=600) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()


def journal(run_dir):
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines() if line.strip()]


def finished_once(run_dir) -> dict:
    finished = [e for e in journal(run_dir) if e["event"] == "finished"]
    keys = [e["job"] for e in finished]
    assert len(keys) == len(set(keys)), f"a finished job was run again: {keys}"
    return {e["job"]: e for e in finished}


def assert_same_results(run_dir, reference_dir, every_step_recorded=True):
    for path in sorted((reference_dir / "report").glob("matrix_*.json")):
        assert json.loads((run_dir / "report" / path.name).read_text()) == json.loads(path.read_text()), path.name
    for path in sorted((reference_dir / "models").rglob("*.safetensors")):
        got, expected = load_weights(run_dir / path.relative_to(reference_dir)), load_weights(path)
        assert all(torch.equal(got[k], expected[k]) for k in expected), path.name
    # Every step trained, including steps trained again after a failure, has the reference's loss.
    # (A killed driver loses the progress events still on their way to it: those steps go unrecorded.)
    reference = {(e["task"], e["step"]): e["loss"] for e in events(reference_dir) if e.get("kind") == "train"}
    trained = [e for e in events(run_dir) if e.get("kind") == "train"]
    recorded = {(e["task"], e["step"]) for e in trained}
    assert recorded == set(reference) if every_step_recorded else recorded <= set(reference)
    assert all(e["loss"] == reference[(e["task"], e["step"])] for e in trained)


def wait_until_gone(pids, timeout=60):
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), timeout, "the old processes to exit")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("recovery")
    assert finish(start(tmp_path, "reference")) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    return tmp_path, tmp_path / "runs" / "reference"


def test_a_worker_killed_mid_task_is_restarted_from_its_checkpoint(reference):
    tmp_path, reference_dir = reference
    run_dir = tmp_path / "runs" / "worker"
    process = start(tmp_path, "worker")
    wait_for(checkpoint_at_least(run_dir, "lpft", 1, 20), 300, "a checkpoint of task 1", alive=process)
    os.kill(worker_pid(run_dir, "lpft", 1, rank=1), signal.SIGKILL)
    assert finish(process) == 0, (tmp_path / "worker.log").read_text()[-3000:]

    task1 = finished_once(run_dir)["train/lpft/1"]
    assert task1["resumed_from"] >= 20  # Ray Train restarted the worker group within the same run
    assert any(e.get("kind") == "start" and e["task"] == 1 and e["step"] >= 20 for e in events(run_dir))
    assert_same_results(run_dir, reference_dir)


def test_the_driver_stopped_by_sigterm_then_killed_resumes_without_redoing_finished_jobs(reference):
    tmp_path, reference_dir = reference
    run_dir = tmp_path / "runs" / "driver"

    # 1. SIGTERM to the driver: the train job checkpoints and the driver exits cleanly.
    first = start(tmp_path, "driver")
    wait_for(checkpoint_at_least(run_dir, "lpft", 1, 10), 300, "a checkpoint of task 1", alive=first)
    first.send_signal(signal.SIGTERM)
    assert finish(first, timeout=120) == 143
    log = (tmp_path / "driver.log").read_text()
    assert "stopped on SIGTERM" in log
    stop_checkpoint = max(e["step"] for e in events(run_dir) if e.get("kind") == "checkpoint" and e["stopping"])
    assert any(e["event"] == "stopped" and e["job"] == "train/lpft/1" for e in journal(run_dir))

    # 2. The same command continues; SIGKILL the driver in the middle of task 2.
    second = start(tmp_path, "driver")
    wait_for(checkpoint_at_least(run_dir, "lpft", 2, 10), 300, "a checkpoint of task 2", alive=second)
    intruder = subprocess.run(command(tmp_path, "driver"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert intruder.returncode == 1
    assert f"in use by another crdist driver (pid {second.pid} on " in intruder.stderr
    workers = [worker_pid(run_dir, "lpft", 2, rank) for rank in (0, 1)]
    second.kill()
    second.wait()
    wait_until_gone(workers)  # the driver's embedded Ray cluster goes down with it
    try:
        os.killpg(second.pid, signal.SIGKILL)  # Ray's helper agents outlive it; tidy them up
    except ProcessLookupError:
        pass

    # 3. Once more: it finishes, redoing no finished job.
    assert finish(start(tmp_path, "driver")) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finished = finished_once(run_dir)
    assert finished["train/lpft/1"]["resumed_from"] == stop_checkpoint
    assert finished["train/lpft/2"]["resumed_from"] >= 10
    assert finished.keys() == {"train/lpft/1", "train/lpft/2"} | {
        f"eval/{c}/{j}" for c in ("c_0", "lpft/c_1", "lpft/c_2") for j in (1, 2)
    }
    runs = [e for e in journal(run_dir) if e["event"] == "run"]
    assert [r["resumed"] for r in runs] == [False, True, True]
    assert_same_results(run_dir, reference_dir, every_step_recorded=False)
    last_resume = finished["train/lpft/2"]["resumed_from"]
    task2 = {e["step"] for e in events(run_dir) if e.get("kind") == "train" and e["task"] == 2}
    assert set(range(last_resume + 1, 141)) <= task2  # the final run recorded every step it trained


def test_a_study_across_two_nodes_survives_losing_one(reference):
    tmp_path, reference_dir = reference
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    port = "6391"
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    try:
        subprocess.run([*ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([*ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"node2": 1}',
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
        run_dir = tmp_path / "runs" / "nodes"
        process = start(tmp_path, "nodes", "train.placement=SPREAD", "cluster.address=127.0.0.1:" + port, env=env)
        wait_for(checkpoint_at_least(run_dir, "lpft", 1, 20), 300, "a checkpoint of task 1", alive=process)
        node2 = [p for p in psutil.process_iter(["name", "cmdline"])
                 if p.info["name"] == "raylet" and "node2" in " ".join(p.info["cmdline"] or [])]
        assert len(node2) == 1
        doomed = [node2[0], *node2[0].children(recursive=True)]
        assert any("RayTrainWorker" in " ".join(p.cmdline()) for p in doomed[1:])  # a worker runs there
        for p in doomed:
            p.kill()
        assert finish(process) == 0, (tmp_path / "nodes.log").read_text()[-3000:]
    finally:
        subprocess.run([*ray, "stop", "--force"], env=env, capture_output=True, timeout=120)

    assert "2 nodes" in (tmp_path / "nodes.log").read_text()
    assert finished_once(run_dir)["train/lpft/1"]["resumed_from"] >= 20
    assert_same_results(run_dir, reference_dir)
