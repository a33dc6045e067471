"""Mid-task checkpoints: which one a resume takes, when they are written, and the job lock."""

import json
import time
from pathlib import Path

import pytest
import torch

from crdist.train.checkpoint import COMPLETE, LATEST, CheckpointError, TaskCheckpoints


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
