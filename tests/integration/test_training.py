"""A real 2-process DeepSpeed ZeRO run through Accelerate, on real shards, outside Ray."""

import gc
import json

import pytest
import torch
import torch.multiprocessing as mp

from crdist.bench.ranks import free_port, rank_environment
from crdist.models.classifier import build_classifier
from crdist.models.weights import load_weights, save_weights
from crdist.train.job import TrainJob
from crdist.train.worker import train_task, train_tasks
from tests.helpers import study


def _rank_main(rank: int, job: TrainJob, port: int, events_path: str) -> None:
    events = []
    with rank_environment(rank, 2, port):
        train_task(job, report=events.append)
    if rank == 0:
        with open(events_path, "w") as f:
            json.dump(events, f)


def train_on_two_ranks(tmp_path, shards, method: str, probe_fraction=1.0, model=None,
                       **train) -> tuple[list[dict], TrainJob]:
    cfg = study(
        data={"shards": str(shards)},
        model=model or {},
        train={"methods": [method], "log_every": 1, **train},
        lpft={"probe_fraction": probe_fraction, "probe_lr": 0.01},
    )
    c0 = tmp_path / "c_0.safetensors"
    save_weights(build_classifier(cfg.model, 1, 10, cfg.seed).state_dict(), c0)
    job = TrainJob.from_study(cfg, method, task=1, num_tasks=5, shards=str(shards), init_weights=str(c0),
                   output=str(tmp_path / "c_1.safetensors"), checkpoints=str(tmp_path / "checkpoints"),
                   log_dir=str(tmp_path / "logs"))
    mp.spawn(_rank_main, args=(job, free_port(), str(tmp_path / "events.json")), nprocs=2, join=True)
    events = json.loads((tmp_path / "events.json").read_text())
    return [e for e in events if e["kind"] == "train"], job


def test_zero2_through_accelerate_trains_two_processes_and_the_loss_goes_down(tmp_path, digits_shards, deepspeed_cpu_op):
    events, job = train_on_two_ranks(tmp_path, digits_shards, "sgd", zero_stage=2, epochs=3)
    summary = json.loads((tmp_path / "c_1.train.json").read_text())
    assert (summary["world"], summary["engine"], summary["zero_stage"]) == (2, "DEEPSPEED", 2)
    losses = [e["loss"] for e in events]
    assert [e["step"] for e in events] == list(range(1, summary["steps"] + 1)) and summary["steps"] >= 15
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3
    before, after = load_weights(job.init_weights), load_weights(job.output)
    assert not torch.equal(before["backbone.0.weight"], after["backbone.0.weight"])
    # What the job cost: each rank's peak resident set (a process with torch loaded: > 100 MiB)
    assert summary["memory_measure"] == "cpu-rss" and len(summary["peak_memory_bytes"]) == 2
    assert all(100 * 2**20 < peak < 8 * 2**30 for peak in summary["peak_memory_bytes"])
    assert all(0 < start <= peak for start, peak in zip(summary["start_memory_bytes"], summary["peak_memory_bytes"]))
    assert summary["samples_per_second_per_worker"] == pytest.approx(summary["samples_per_second"] / 2)
    # small-cnn on 1×8×8 digits, by hand: 2·(9·1·32·64 + 9·32·64·64 + 9·64·128·16 + 128·10) multiply-adds
    # per forward (the third convolution runs after a 2×2 max-pool), × 3 for training
    assert summary["flops_per_sample"] == 3 * 2 * (9 * 32 * 64 + 9 * 32 * 64 * 64 + 9 * 64 * 128 * 16 + 128 * 10)
    assert summary["mfu"] is None  # CPU
    assert summary["parameters"] == sum(t.numel() for k, t in after.items() if "running" not in k and "num_batches" not in k)


def test_a_per_task_head_trains_only_the_logits_of_the_tasks_classes(tmp_path, digits_shards, deepspeed_cpu_op):
    # Every loss er computes on task 1 sees task 1's logits only, so the head's rows of the other
    # classes get no gradient and, with AdamW and no weight decay, stay exactly as in c_0.
    from crdist.data.manifest import Manifest

    events, job = train_on_two_ranks(tmp_path, digits_shards, "er", model={"head": "per_task"}, zero_stage=2,
                                     max_steps=8)
    assert len(events) == 8
    own = list(Manifest.load(digits_shards).task(1).classes)
    before, after = load_weights(job.init_weights), load_weights(job.output)
    for name in ("head.weight", "head.bias"):
        others = [c for c in range(10) if c not in own]
        assert torch.equal(before[name][others], after[name][others]), name
        assert not torch.equal(before[name][own], after[name][own]), name


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_lpft_probe_trains_the_head_and_leaves_the_backbone_bit_identical(tmp_path, digits_shards, deepspeed_cpu_op,
                                                                          optimizer):
    # SGD as the paper's code runs it: momentum and weight decay, both scaled away by lr 0.
    events, job = train_on_two_ranks(tmp_path, digits_shards, "lpft", zero_stage=2, epochs=1, optimizer=optimizer,
                                     weight_decay=5e-4)
    assert {e["phase"] for e in events} == {"probe"}
    assert events[-1]["loss"] < events[0]["loss"]
    before, after = load_weights(job.init_weights), load_weights(job.output)
    backbone = [k for k in before if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BatchNorm stats
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_lpft_switches_from_probe_to_finetuning_with_a_restarted_schedule(tmp_path, digits_shards, deepspeed_cpu_op):
    events, job = train_on_two_ranks(tmp_path, digits_shards, "lpft", probe_fraction=0.5, zero_stage=2, epochs=2)
    phases = [e["phase"] for e in events]
    probe = phases.count("probe")
    assert probe == round(0.5 * len(events)) and phases == ["probe"] * probe + ["finetune"] * (len(events) - probe)
    # The probe's cosine schedule has decayed; fine-tuning starts again at its own peak, train.lr.
    assert events[probe - 1]["lr"] < 0.01 * 0.1
    assert events[probe]["lr"] == job.train.lr
    before, after = load_weights(job.init_weights), load_weights(job.output)
    assert not torch.equal(before["backbone.0.weight"], after["backbone.0.weight"])
    assert not torch.equal(before["backbone.1.running_mean"], after["backbone.1.running_mean"])  # BN trains again


def _tasks_in_one_process(rank: int, jobs: list[TrainJob], port: int, out: str) -> None:
    import deepspeed

    with rank_environment(rank, 2, port):
        train_tasks(jobs)
        # Engines made after train_tasks froze the older objects are the collector's to find.
        engines = sum(isinstance(o, deepspeed.DeepSpeedEngine) for o in gc.get_objects())
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"engines_left": engines}, f)


def test_a_methods_tasks_in_one_process_free_each_engine_and_train_as_fresh_processes_do(tmp_path, digits_shards,
                                                                                      deepspeed_cpu_op):
    """What a train job does with its workers: both tasks in the same two processes, under ZeRO-3
    (whose DeepSpeed keeps every model for the process's life unless told otherwise). No engine
    is left afterwards, and task 2 equals task 2 trained from the same c_1 in fresh processes."""
    cfg = study(data={"shards": str(digits_shards)}, train={"methods": ["lpft"], "zero_stage": 3, "max_steps": 6},
                lpft={"probe_fraction": 0.5, "probe_lr": 0.01})
    save_weights(build_classifier(cfg.model, 1, 10, cfg.seed).state_dict(), tmp_path / "c_0.safetensors")

    def job(task: int, out: str) -> TrainJob:
        return TrainJob.from_study(cfg, "lpft", task=task, num_tasks=2, shards=str(digits_shards),
                                   init_weights=str(tmp_path / f"c_{task - 1}.safetensors"),
                                   output=str(tmp_path / out), checkpoints=str(tmp_path / f"checkpoints-{out}"),
                                   log_dir=str(tmp_path / "logs"))

    jobs = [job(1, "c_1.safetensors"), job(2, "c_2.safetensors")]
    mp.spawn(_tasks_in_one_process, args=(jobs, free_port(), str(tmp_path / "left.json")), nprocs=2, join=True)
    assert json.loads((tmp_path / "left.json").read_text()) == {"engines_left": 0}
    mp.spawn(_rank_main, args=(job(2, "fresh_c_2.safetensors"), free_port(), str(tmp_path / "events.json")),
             nprocs=2, join=True)
    kept, fresh = load_weights(tmp_path / "c_2.safetensors"), load_weights(tmp_path / "fresh_c_2.safetensors")
    assert kept.keys() == fresh.keys() and all(torch.equal(kept[k], fresh[k]) for k in kept)
    assert not torch.equal(kept["head.weight"], load_weights(tmp_path / "c_1.safetensors")["head.weight"])
