"""A kill while a mid-task checkpoint is being written leaves the previous one, and resuming from it
reproduces the uninterrupted run bit for bit (2 real processes, DeepSpeed ZeRO-2, real SIGKILL)."""

import json
import os
import signal

import pytest
import torch
import torch.multiprocessing as mp

from crdist.bench.ranks import free_port, rank_environment
from crdist.models.classifier import build_classifier
from crdist.models.weights import load_weights, save_weights
from crdist.train.checkpoint import COMPLETE, LATEST, TaskCheckpoints
from crdist.train.job import TrainJob
from crdist.train.worker import train_task
from tests.helpers import study


def kill_while_writing_checkpoint(step: int) -> None:
    """SIGKILL this process (rank 0) in the middle of writing the checkpoint of ``step``."""
    import crdist.train.checkpoint as checkpoint

    real_write_json = checkpoint.write_json

    def write_json(path, data):
        # DeepSpeed has written this rank's model and optimizer files; the checkpoint is half done.
        if path.name == "position-rank0.json" and data["step"] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        real_write_json(path, data)

    checkpoint.write_json = write_json


def _rank_main(rank: int, job: TrainJob, port: int, events_path: str, kill_at_step: int | None) -> None:
    if kill_at_step is not None and rank == 0:
        kill_while_writing_checkpoint(kill_at_step)
    events = []
    with rank_environment(rank, 2, port):
        train_task(job, report=events.append)
    if rank == 0:
        with open(events_path, "w") as f:
            json.dump(events, f)


def run_job(directory, shards, kill_at_step=None):
    cfg = study(
        data={"shards": str(shards)},
        train={"methods": ["lpft"], "epochs": 3, "log_every": 1},
        lpft={"probe_fraction": 0.5},
        checkpoint={"every_steps": 5, "keep": 2},
    )
    directory.mkdir(exist_ok=True)
    c0 = directory / "c_0.safetensors"
    save_weights(build_classifier(cfg.model, 1, 10, cfg.seed).state_dict(), c0)
    job = TrainJob.from_study(cfg, "lpft", task=1, num_tasks=5, shards=str(shards), init_weights=str(c0),
                   output=str(directory / "c_1.safetensors"), checkpoints=str(directory / "checkpoints"),
                   log_dir=str(directory / "logs"))
    events_path = directory / "events.json"
    mp.spawn(_rank_main, args=(job, free_port(), str(events_path), kill_at_step), nprocs=2, join=True)
    return json.loads(events_path.read_text()), job


def test_a_kill_mid_write_keeps_the_previous_checkpoint_and_resuming_is_exact(tmp_path, digits_shards, deepspeed_cpu_op):
    reference, ref_job = run_job(tmp_path / "reference", digits_shards)
    ref_steps = {e["step"]: e for e in reference if e["kind"] == "train"}
    assert len(ref_steps) == 21 and {e["phase"] for e in ref_steps.values()} == {"probe", "finetune"}
    assert not (tmp_path / "reference" / "checkpoints").exists()  # dropped once c_1 was written

    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        run_job(tmp_path / "killed", digits_shards, kill_at_step=10)
    checkpoints = TaskCheckpoints(tmp_path / "killed" / "checkpoints")
    assert (checkpoints.directory / LATEST).read_text() == "step-000005"
    assert checkpoints.latest() == checkpoints.directory / "step-000005"
    half_written = checkpoints.directory / "step-000010.partial"
    assert half_written.is_dir() and not (half_written / COMPLETE).exists()
    assert not (tmp_path / "killed" / "c_1.safetensors").exists()

    resumed, job = run_job(tmp_path / "killed", digits_shards)
    assert resumed[0]["kind"] == "start" and resumed[0]["step"] == 5
    after = {e["step"]: e for e in resumed if e["kind"] == "train"}
    assert sorted(after) == list(range(6, 22))
    for step, event in after.items():  # the same losses and learning rates, bit for bit
        assert (event["loss"], event["lr"], event["phase"]) == (
            ref_steps[step]["loss"], ref_steps[step]["lr"], ref_steps[step]["phase"])
    final, expected = load_weights(job.output), load_weights(ref_job.output)
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    summary = json.loads((tmp_path / "killed" / "c_1.train.json").read_text())
    assert summary["resumed_from"] == 5 and summary["steps"] == 21

    # A worker group restarted after the job finished (its checkpoints already gone) trains nothing.
    written = os.stat(job.output).st_mtime_ns
    again, _ = run_job(tmp_path / "killed", digits_shards)
    assert again == [] and os.stat(job.output).st_mtime_ns == written
