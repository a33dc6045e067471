"""Mid-task checkpoints: a kill while writing one leaves the previous one, and resuming from it
reproduces the uninterrupted run bit for bit (2 real processes, DeepSpeed ZeRO-2, real SIGKILL)."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from crdist.bench.ranks import free_port, rank_environment
from crdist.models.classifier import build_classifier
from crdist.models.weights import load_weights, save_weights
from crdist.train.checkpoint import COMPLETE, LATEST, CheckpointError, TaskCheckpoints
from crdist.train.worker import TrainJob, train_task
from tests.conftest import study


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


def test_the_newest_complete_checkpoint_wins_over_a_stale_pointer_and_a_partial(tmp_path):
    checkpoints = TaskCheckpoints(tmp_path)
    for name in ("step-000010", "step-000020", "step-000030.partial"):
        (tmp_path / name).mkdir()
        (tmp_path / name / COMPLETE).write_text("{}")  # step-30 was complete, but killed before its rename
    (tmp_path / LATEST).write_text("step-000010")  # killed between step-20's rename and the pointer
    assert checkpoints.latest() == tmp_path / "step-000020"


def test_the_policy_saves_by_step_count_and_by_time_but_not_at_the_last_step():
    from accelerate import Accelerator

    from crdist.train.checkpoint import CheckpointConfig
    from crdist.train.policy import CheckpointPolicy

    accelerator = Accelerator(cpu=True)  # one process: the all-reduce is the identity
    by_steps = CheckpointPolicy(CheckpointConfig(every_steps=5))
    assert [step for step in range(1, 21) if by_steps.decide(step, 20, accelerator)[0]] == [5, 10, 15]

    by_time = CheckpointPolicy(CheckpointConfig(every_steps=0, every_minutes=0.002))  # 0.12 s
    assert by_time.decide(1, 20, accelerator) == (False, False)
    time.sleep(0.15)
    assert by_time.decide(2, 20, accelerator) == (True, False)
    by_time.saved()
    assert by_time.decide(3, 20, accelerator) == (False, False)


def _decide_on_rank(rank: int, world: int, out: str) -> None:
    import json
    from types import SimpleNamespace

    import torch.distributed as dist

    from crdist.train.checkpoint import CheckpointConfig
    from crdist.train.policy import CheckpointPolicy

    dist.init_process_group("gloo", rank=rank, world_size=world)
    cpu = SimpleNamespace(device=torch.device("cpu"))
    # Rank 0 finds a time-based checkpoint due at every step (every 60 µs); after a save the flag it
    # raised before that save is stale.
    by_time = CheckpointPolicy(CheckpointConfig(every_steps=0, every_minutes=1e-6 if rank == 0 else 0))
    saves = []
    for step in range(1, 8):
        time.sleep(0.001)  # a step's compute: more than the 60 µs
        if by_time.decide(step, 100, cpu)[0]:
            saves.append(step)
            by_time.saved()
    by_time.finish()
    # Rank 1 is asked to stop during step 3.
    at = [0]
    stop = SimpleNamespace(requested=lambda: rank == 1 and at[0] >= 3)
    stopping = CheckpointPolicy(CheckpointConfig(every_steps=0), stop)
    decisions = []
    for step in range(1, 8):
        at[0] = step
        decisions.append(stopping.decide(step, 100, cpu))
        if decisions[-1][1]:
            break
    stopping.finish()
    # Steps of 10 ms: after the timed steps, the ranks exchange about every 0.1 s, every ~10 steps.
    # Rank 1 is asked to stop from step 40 on.
    stop = SimpleNamespace(requested=lambda: rank == 1 and at[0] >= 40)
    periodic = CheckpointPolicy(CheckpointConfig(every_steps=0), stop, agree_every_seconds=0.1)
    stopped_at = None
    for step in range(1, 100):
        at[0] = step
        time.sleep(0.01)
        if periodic.decide(step, 100, cpu)[1]:
            stopped_at = step
            break
    periodic.finish()
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "saves": saves, "decisions": decisions, "period": periodic.agreement.period,
        "exchanges": periodic.agreement.exchanges, "stopped_at": stopped_at}))
    dist.destroy_process_group()


def test_two_ranks_agree_on_time_checkpoints_and_a_stop_an_exchange_late_and_never_twice(tmp_path):
    import json

    from crdist.bench.ranks import spawn_ranks

    spawn_ranks(_decide_on_rank, 2, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same decisions at the same steps on both ranks
    assert ranks[0]["saves"] == [2, 4, 6]  # raised at 1, 3, 5; the flags raised at 2, 4, 6 were stale
    assert ranks[0]["decisions"] == [[False, False]] * 3 + [[True, True]]  # raised at 3 on rank 1, acted on at 4
    # Once the step time is measured, the flags go round every few steps, and a stop still comes
    # at the same step on both ranks, within two exchanges of being asked for.
    period = ranks[0]["period"]
    assert 3 <= period <= 10
    assert 40 < ranks[0]["stopped_at"] <= 40 + 2 * period
    assert ranks[0]["exchanges"] < 13 + (ranks[0]["stopped_at"] - 13) / 2


def test_a_preemption_notice_saves_once_per_newly_preempted_node_and_never_stops():
    from types import SimpleNamespace

    from accelerate import Accelerator

    from crdist.train.checkpoint import CheckpointConfig
    from crdist.train.policy import CheckpointPolicy, PreemptionNotice

    accelerator = Accelerator(cpu=True)
    # What ray.train.get_preemption_info answers at each read: nothing, node a, a again, a and b.
    answers = iter([None, SimpleNamespace(preempted_node_ids=["a"]), SimpleNamespace(preempted_node_ids=["a"]),
                    SimpleNamespace(preempted_node_ids=["b", "a"])])
    reads = []
    notice = PreemptionNotice(lambda: reads.append(1) or next(answers), every_seconds=0.05)
    policy = CheckpointPolicy(CheckpointConfig(every_steps=0), preemption=notice)
    decisions = []
    for step in range(1, 5):
        assert policy.decide(step, 100, accelerator) == (False, False)  # not due yet: no read
        time.sleep(0.06)
        decisions.append((policy.decide(step, 100, accelerator), policy.preempted_nodes))
    assert len(reads) == 4
    assert decisions == [((False, False), ()), ((True, False), ("a",)), ((False, False), ()),
                         ((True, False), ("a", "b"))]


def test_the_job_lock_goes_with_its_holder_not_with_the_processes_it_forked(tmp_path):
    # A worker forks loader processes while it holds the lock; one of them can outlive the worker
    # (a node lost mid-epoch). The restarted worker group must still get the lock.
    import subprocess
    import sys

    from crdist.train.checkpoint import JobLock

    holder = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time
from pathlib import Path
from crdist.train.checkpoint import JobLock
lock = JobLock(Path({str(tmp_path / 'task-1')!r}))
lock.acquire()
if os.fork() == 0:
    time.sleep(60)  # the forked child lives on
    os._exit(0)
print("locked", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match="still locked"):
            JobLock(tmp_path / "task-1", timeout=0.5).acquire()  # its holder is alive
        holder.kill()
        holder.wait()
        lock = JobLock(tmp_path / "task-1", timeout=5)
        lock.acquire()  # the holder is gone; its forked child does not keep the lock
        lock.release()
    finally:
        holder.kill()
        subprocess.run(["pkill", "-f", str(tmp_path / "task-1")])
