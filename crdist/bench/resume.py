"""``crdist bench resume``: kill train workers mid-task and measure what each failure costs.

For every failure it reports the steps trained again (the gap between the last step reached and
the checkpoint resumed from; it must not exceed one checkpoint interval) and the time from the
kill to the first new training step, split into detection + restart (kill → resumed from the
checkpoint) and the first step after the resume.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from crdist.bench.faults import events, kill, last_step, wait_for, worker_pid


@dataclass
class Failure:
    task: int
    rank: int
    target_step: int = 0
    killed_at: float = 0.0  # wall clock
    last_step: int = 0  # last step reported before the kill
    resumed_from: int | None = None
    resumed_at: float | None = None
    first_new_step_at: float | None = None


def bench_resume(config: Path, overrides: list[str], failures: int, seed: int, runs_dir: Path) -> int:
    from crdist.study import load_study

    name = f"bench-resume-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [*overrides, f"name={name}", f"runs_dir={runs_dir}", "train.log_every=1"]
    study = load_study(config, overrides)  # fail on a bad config before starting anything
    method, tasks = study.train.methods[0], study.data.tasks
    run_dir = runs_dir / name
    rng = random.Random(seed)
    plan = [Failure(task=1 + i % tasks, rank=rng.randrange(study.train.workers)) for i in range(failures)]
    command = [sys.executable, "-m", "crdist", "run", str(config)] + [x for o in overrides for x in ("--set", o)]
    print(f"bench resume: {failures} SIGKILL(s) of a {method} worker, checkpoints every "
          f"{study.checkpoint.every_steps} steps; run {run_dir}")
    started = time.monotonic()
    with open(runs_dir / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            for failure in plan:
                total = wait_for(lambda: _steps_of(run_dir, method, failure.task), 900, f"task {failure.task}",
                                 alive=process)
                after = max(last_step(run_dir, method, failure.task), _resumed_step(run_dir, method, failure.task))
                # The kill follows the progress event of the aimed step, which reaches events.jsonl
                # up to a second late: aim early enough that the task is still training when it
                # lands (at least two checkpoint intervals before its end).
                latest = max(after + 1, total - 1 - 2 * study.checkpoint.every_steps)
                failure.target_step = min(latest, max(after + 1, int(total * rng.uniform(0.3, 0.8))))
                wait_for(lambda: last_step(run_dir, method, failure.task) >= failure.target_step, 900,
                         f"step {failure.target_step} of task {failure.task}", interval=0.01, alive=process)
                failure.killed_at = kill(worker_pid(run_dir, method, failure.task, failure.rank))
                print(f"  killed rank {failure.rank} of {method} task {failure.task} "
                      f"once step {failure.target_step} was reported")
                if (run_dir / "models" / method / f"c_{failure.task}.safetensors").is_file():
                    process.wait()
                    print(f"the kill landed after task {failure.task} had finished: its {total} steps took less "
                          f"than the progress events' delay. Give the tasks more steps (train.epochs) so that a "
                          f"kill lands mid-task")
                    return 1
                wait_for(lambda: _resumed_after(run_dir, method, failure), 900, "the resume", alive=process)
            code = process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
    if code != 0:
        print(f"the study failed (exit code {code}); see {runs_dir / f'{name}.log'}")
        return 1
    for failure in plan:
        _measure(run_dir, method, failure)
    print(_table(plan, method, study.checkpoint.every_steps))
    print(f"\nwhole study with {failures} failure(s): {time.monotonic() - started:.0f} s; report in {run_dir / 'report'}")
    worst = max((f.last_step - (f.resumed_from or 0) for f in plan), default=0)
    interval = study.checkpoint.every_steps
    if interval and worst > interval:
        print(f"FAIL: a failure lost {worst} steps, more than one checkpoint interval ({interval})")
        return 1
    return 0


def _steps_of(run_dir: Path, method: str, task: int) -> int:
    for event in events(run_dir):
        if event.get("kind") == "train" and (event["method"], event["task"]) == (method, task):
            return event["steps"]
    return 0


def _resumed_step(run_dir: Path, method: str, task: int) -> int:
    starts = [e["step"] for e in events(run_dir) if e.get("kind") == "start" and (e["method"], e["task"]) == (method, task)]
    return max(starts, default=0)


def _resumed_after(run_dir: Path, method: str, failure: Failure) -> bool:
    """The restarted attempt has begun (from a checkpoint, or from step 0 if none was written yet)."""
    return any(
        e.get("kind") == "start" and (e["method"], e["task"]) == (method, failure.task) and e["time"] > failure.killed_at
        for e in events(run_dir)
    )


def _measure(run_dir: Path, method: str, failure: Failure) -> None:
    job = [e for e in events(run_dir) if e.get("method") == method and e.get("task") == failure.task]
    before = [e["step"] for e in job if e["kind"] == "train" and e["time"] <= failure.killed_at]
    failure.last_step = max(before, default=0)
    resume = next(e for e in job if e["kind"] == "start" and e["time"] > failure.killed_at)
    failure.resumed_from, failure.resumed_at = resume["step"], resume["time"]
    first = next(e for e in job if e["kind"] == "train" and e["time"] > resume["time"])
    failure.first_new_step_at = first["time"]


def _table(plan: list[Failure], method: str, interval: int) -> str:
    header = ["failure", "job", "last step", "resumed at", "steps redone", "kill→resume s", "→1st step s", "total s"]
    rows = []
    for i, f in enumerate(plan, start=1):
        rows.append([
            str(i), f"{method} task {f.task} rank {f.rank}", str(f.last_step), str(f.resumed_from),
            str(f.last_step - f.resumed_from), f"{f.resumed_at - f.killed_at:.1f}",
            f"{f.first_new_step_at - f.resumed_at:.1f}", f"{f.first_new_step_at - f.killed_at:.1f}",
        ])
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n" + "\n".join(lines) + f"\n\ncheckpoint interval: {interval} steps"
