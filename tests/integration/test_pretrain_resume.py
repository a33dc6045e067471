"""The pretrain stage for real (Ray, Ray Train, DeepSpeed, the driver, the sweep): a run killed
mid-pretraining resumes it from its checkpoint, two methods of a study share it, and two sweep
points with the same fingerprint train it once, bit for bit the same weights as the killed and
resumed one."""

import json
import os
import signal
import subprocess
import sys

import torch

from crdist.bench.faults import wait_for
from crdist.models.weights import load_weights
from crdist.orchestrate import pretrain
from crdist.train.checkpoint import TaskCheckpoints
from tests.helpers import ROOT
from tests.helpers.studies import finish, journal

STUDY = ["data.tasks=2", "train.max_steps=6", "evaluate.protocols=[knn]", "train.methods=[sgd,frozen]",
         "pretrain.steps=240", "pretrain.data.benchmark=seq-digits", "pretrain.data.class_order=[6,7,8,9,0,1,2,3,4,5]",
         "pretrain.data.classes_per_task=4", "pretrain.data.tasks=1", "checkpoint.every_steps=10", "train.log_every=5"]


def test_killed_mid_pretraining_it_resumes_and_sweep_points_that_share_it_train_it_once(tmp_path):
    shards = [f"data.shards={tmp_path / 'shards'}", f"pretrain.data.shards={tmp_path / 'source'}"]

    # A run killed (its whole process group) once the pretraining has a checkpoint, then run again.
    # 240 steps: the kill lands seconds before the stage ends (60 steps, under 2 s on an idle
    # machine, once ended before a busy test process had sent it).
    killed_dir = tmp_path / "killed"
    sets = [*STUDY, *shards, "name=killed", f"runs_dir={tmp_path / 'runs'}", f"pretrain.dir={killed_dir}"]
    command = [sys.executable, "-m", "crdist", "run"] + [x for s in sets for x in ("--set", s)]
    log = open(tmp_path / "killed.log", "a")
    first = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def checkpointed():
            stages = list(killed_dir.glob("seq-digits-*"))
            latest = stages and TaskCheckpoints(stages[0] / "checkpoints").latest()
            return latest and int(latest.name.removeprefix("step-")) >= 20
        wait_for(checkpointed, timeout=600, what="a checkpoint of the pretraining", alive=first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    (stage,) = killed_dir.glob("seq-digits-*")
    assert not (stage / pretrain.WEIGHTS).exists()
    again = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    assert finish(again, timeout=900) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    run = tmp_path / "runs" / "killed"
    resumed = [e for e in journal(run) if e.get("job") == "pretrain" and e["event"] == "finished"]
    assert len(resumed) == 1 and resumed[0]["resumed_from"] >= 20 and resumed[0]["steps"] == 240

    # A sweep of two seeds over the same settings in a fresh directory: the first point trains the
    # stage, the second reuses it. pretrain.seed is fixed, so the seed is not in the fingerprint;
    # nor are the methods (the points run `frozen` alone, which trains no job of its own).
    shared = tmp_path / "shared"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"name: pre\nbase: {ROOT / 'configs' / 'demo.yaml'}\nruns_dir: {tmp_path / 'runs'}\n"
        f"set: {json.dumps([*STUDY, *shards, f'pretrain.dir={shared}', 'train.methods=[frozen]'])}\n"
        "axes:\n  seed: [0, 1]\n")
    result = subprocess.run([sys.executable, "-m", "crdist", "sweep", str(sweep)], cwd=ROOT, capture_output=True,
                            text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    points = [tmp_path / "runs" / "pre" / f"seed-{s}" for s in (0, 1)]
    stages = [[e for e in journal(p) if e.get("job") == "pretrain"] for p in points]
    assert [e["event"] for e in stages[0]] == ["started", "finished"] and "reused" not in stages[0][1]
    assert [(e["event"], e.get("reused")) for e in stages[1]] == [("finished", True)]
    (shared_stage,) = shared.glob("seq-digits-*")
    assert shared_stage.name == stage.name  # the same fingerprint

    # Killed and resumed, or trained at one go: the same weights, bit for bit.
    resumed_weights, straight = load_weights(stage / pretrain.WEIGHTS), load_weights(shared_stage / pretrain.WEIGHTS)
    assert resumed_weights.keys() == straight.keys()
    assert all(torch.equal(resumed_weights[k], straight[k]) for k in straight)
    # Every run's c_0 (shared by both methods) is that backbone, with a head of the study's classes
    # seeded by the study's seed.
    for run_dir in [run, *points]:
        c_0 = load_weights(run_dir / "models" / "c_0.safetensors")
        assert all(torch.equal(c_0[k], straight[k]) for k in straight if k.startswith("backbone."))
        assert c_0["head.weight"].shape[0] == 10 and straight["head.weight"].shape[0] == 10
        assert not torch.equal(c_0["head.weight"], straight["head.weight"])
        for method in ("sgd", "frozen") if run_dir == run else ("frozen",):
            assert (run_dir / "models" / method / "c_2.safetensors").is_file()
    heads = [load_weights(p / "models" / "c_0.safetensors")["head.weight"] for p in points]
    assert not torch.equal(heads[0], heads[1])  # each seed's own head
    assert "pretrain reusing" in (points[1] / "logs" / "driver.log").read_text()
