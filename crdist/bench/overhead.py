"""``crdist bench overhead``: where a study's wall time goes, from its run directory, and a timeline
PNG of its train and eval jobs.

Run on a finished run directory, or with none, it first runs the demo (``crdist run`` in a
subprocess, timed from the command's start). The figures come from what every run writes:

- ``journal.jsonl``: when the driver started, when each job started and finished (driver clock);
- ``logs/train/<method>-task<i>-rank0.log``: the worker's first line (``train_task`` entered: Ray
  Train's controller, worker group and torch process group are up) and its ``start`` event (model
  built, DeepSpeed engine made, checkpoint loaded: the first step is next);
- ``models/<method>/c_<i>.train.json``: the training loop's own seconds;
- ``eval/**.json``: each evaluation's seconds, ending at its journal ``finished`` (an evaluation
  taken from an earlier checkpoint with the same weights ran no job and is left out).

A train job trains a chain of tasks (a method's, or several methods' in turn) in the same worker processes. Each task's time is split into
*start* (journal start → the worker's first line: Ray Train's controller, worker group and process
group; only a task that starts a job's workers has one), *engine* (→ the first step: model, data
stream, DeepSpeed engine, checkpoint load), *compute* (the loop), and *end* (→ journal finish:
weights consolidated and written, seen by the driver).
The "critical path" figures are unions of intervals over the run's wall time: when some training
step was computing, when some evaluation was, and when neither was (orchestration, start-up, idle).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainSpan:
    """One task of a train job."""

    label: str  # "sgd/1"
    method: str
    submitted: float  # journal "started" (a task on workers kept from the one before: when it began)
    entered: float | None  # worker's first log line
    first_step: float | None  # worker's "start" event
    compute: float  # the loop's seconds
    finished: float  # journal "finished"
    fresh: bool = True  # the task started its job's workers; False: they had trained the one before
    after: str | None = None  # on kept workers: the task they trained before ("sgd/2"), where journalled


@dataclass
class EvalSpan:
    label: str
    start: float
    end: float


def bench_overhead(run_dir: Path | None, config: Path, overrides: list[str], runs_dir: Path,
                   json_out: Path | None) -> int:
    command_seconds = None
    if run_dir is None:
        name = f"bench-overhead-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = runs_dir / name
        command = [sys.executable, "-m", "crdist", "run", str(config), "--set", f"name={name}",
                   "--set", f"runs_dir={runs_dir}", *[x for o in overrides for x in ("--set", o)]]
        print(f"bench overhead: running {config} as {run_dir} (log: {run_dir}.log)", flush=True)
        started = time.time()
        with open(f"{run_dir}.log", "w") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
        command_seconds = time.time() - started
        if code != 0:
            print(f"crdist bench overhead: the run failed (exit {code}); see {run_dir}.log", file=sys.stderr)
            return code
    figures = analyse(run_dir, command_seconds)
    figures["bare_start_seconds"] = bare_start(run_dir)
    figures["ray_train_fixed_seconds"] = ray_train_fixed_cost(load_workers(run_dir))
    figures.update(without_ray_train(spans(run_dir)[2], figures))
    _print(figures)
    png = run_dir / "report" / "timeline.png"
    plot_timeline(run_dir, png)
    print(f"timeline: {png}")
    if json_out:
        json_out.write_text(json.dumps(figures, indent=1))
        print(f"wrote {json_out}")
    return 0


def load_workers(run_dir: Path) -> int:
    from crdist.study import load_study

    return load_study(run_dir / "config.yaml").train.workers


def ray_train_fixed_cost(workers: int) -> float:
    """Seconds of ``TorchTrainer.fit`` for a train function that does nothing, on ``workers`` workers
    of a private Ray cluster (the second of two, so that Ray's own first start is not counted):
    what Ray Train costs per job whatever crdist does."""
    import logging
    import os
    import tempfile

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # as crdist's own cluster
    ray.init(address="local", num_cpus=workers + 1, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="crdist-ray-train-") as storage:
            for attempt in range(2):
                started = time.time()
                TorchTrainer(_nothing, scaling_config=ScalingConfig(num_workers=workers),
                             run_config=RunConfig(name=f"empty-{attempt}", storage_path=storage)).fit()
                seconds = time.time() - started
    finally:
        ray.shutdown()
    return seconds


def _nothing(config: dict) -> None:
    pass


def bare_start(run_dir: Path) -> float | None:
    """Seconds from launching the run's first train job's worker without Ray (one fresh interpreter
    per rank, as ``torchrun`` or ``accelerate launch`` start them) to its first training step."""
    import tempfile

    from crdist.bench.ranks import spawn_ranks
    from crdist.study import load_study

    study = load_study(run_dir / "config.yaml")
    shards = _shards_of(run_dir)
    with tempfile.TemporaryDirectory(prefix="crdist-bare-start-") as tmp:
        launched = time.time()
        spawn_ranks(_bare_rank, study.train.workers, str(run_dir / "config.yaml"), shards,
                    str(run_dir / "models" / "c_0.safetensors"), tmp)
        first_step = json.loads((Path(tmp) / "first_step.json").read_text())["time"]
    return first_step - launched


def _shards_of(run_dir: Path) -> str:
    from crdist.data.prepare import prepare
    from crdist.study import load_study

    return str(prepare(load_study(run_dir / "config.yaml").data, log=lambda line: None).root)


def _bare_rank(rank: int, world: int, config: str, shards: str, initial: str, out: str) -> None:
    from dataclasses import replace

    from crdist.study import load_study
    from crdist.train.job import TrainJob
    from crdist.train.worker import train_task

    study = load_study(config)
    study = replace(study, train=replace(study.train, max_steps=1))
    job = TrainJob.from_study(study, study.train.methods[0], task=1, num_tasks=study.data.tasks or 1, shards=shards,
                              init_weights=initial, output=f"{out}/c_1.safetensors",
                              checkpoints=f"{out}/checkpoints", log_dir=f"{out}/logs")

    def report(event: dict) -> None:
        if event.get("kind") == "start":
            Path(out, "first_step.json").write_text(json.dumps({"time": event["time"]}))

    train_task(job, report=report)


def _journal(run_dir: Path) -> list[dict]:
    lines = (run_dir / "journal.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _log_time(line: str) -> float:
    """Epoch seconds of a log line's ``%(asctime)s`` (local time, milliseconds after the comma)."""
    stamp, millis = line[:23].split(",")
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def _last_attempt(run_dir: Path, label: str, first: bool) -> float | None:
    """The worker's first log line, or its last ``start`` event, of a train job's rank 0."""
    method, task = label.split("/")
    path = run_dir / "logs" / "train" / f"{method}-task{task}-rank0.log"
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    if first:
        entered = [_log_time(line) for line in lines if re.search(r": rank 0 of \d+, pid", line)]
        return entered[-1] if entered else None
    starts = [float(m.group(1)) for line in lines if (m := re.search(r"'kind': 'start'.*'time': ([0-9.]+)", line))]
    return starts[-1] if starts else None


def spans(run_dir: Path) -> tuple[float, float, list[TrainSpan], list[EvalSpan]]:
    journal = _journal(run_dir)
    # The last invocation of the run that trained anything (a rerun of a finished run trains nothing),
    # up to its report.
    starts = [i for i, e in enumerate(journal) if e["event"] == "run"]
    begin = max((i for i in starts if any(e["event"] == "started" for e in journal[i:])), default=starts[-1])
    end = next((i + 1 for i in range(begin, len(journal)) if journal[i]["event"] == "report"), len(journal))
    journal = journal[begin:end]
    run_start = journal[0]["time"]
    started = {e["job"]: e["time"] for e in journal if e["event"] == "started"}
    finished = {e["job"]: e["time"] for e in journal if e["event"] == "finished"}
    report = journal[-1]["time"]
    # Run directories written before train jobs kept their workers have no "workers" field: all new.
    fresh = {e["job"]: e.get("workers", "new") == "new" for e in journal if e["event"] == "started"}
    after = {e["job"]: e["after"] for e in journal if e["event"] == "started" and e.get("after")}
    trains = []
    for job, submitted in started.items():
        if not job.startswith("train/") or job not in finished:
            continue
        label = job.removeprefix("train/")
        method, task = label.split("/")
        summary = json.loads((run_dir / "models" / method / f"c_{task}.train.json").read_text())
        entered = _last_attempt(run_dir, label, True)
        if not fresh[job] and entered is not None:
            # The workers begin the next task as soon as they have written c_i; the driver journals
            # its start when it sees c_i, up to half a second later.
            submitted = min(submitted, entered)
        trains.append(TrainSpan(label, method, submitted, entered, _last_attempt(run_dir, label, False),
                                summary["seconds"], finished[job], fresh[job], after.get(job)))
    # An evaluation taken from an earlier checkpoint with the same weights (every c_i of `frozen`)
    # ran no job: it has no span.
    reused = {e["job"] for e in journal if e["event"] == "finished" and e.get("same_weights_as")}
    evals = []
    for job, end in finished.items():
        if not job.startswith("eval/") or job in reused:
            continue
        parts = job.split("/")[1:]  # [c_0, task] or [method, c_i, task]
        folder = "c_0" if len(parts) == 2 else parts[0]
        path = run_dir / "eval" / folder / f"{parts[-2].removeprefix('c_')}-{parts[-1]}.json"
        seconds = json.loads(path.read_text())["seconds"] if path.is_file() else 0.0
        evals.append(EvalSpan(job.removeprefix("eval/"), end - seconds, end))
    return run_start, report, sorted(trains, key=lambda s: s.submitted), sorted(evals, key=lambda s: s.start)


def without_ray_train(trains: list[TrainSpan], figures: dict) -> dict:
    """The two start-up targets with Ray Train's own fixed cost per job taken out, as measured by
    ``ray_train_fixed_cost``: what crdist itself adds.

    A job's Ray Train cost is placed in the last ``fixed`` seconds before its worker's first line
    (the controller, the worker group and the process group come up once its CPUs are granted).
    Of the wall clock, only the part of those intervals when no training step computed is taken
    out: the wall time a study would save if Ray Train started its jobs for free."""
    fixed, bare = figures.get("ray_train_fixed_seconds"), figures.get("bare_start_seconds")
    if not fixed:
        return {}
    starting = [(max(t.submitted, t.entered - fixed), t.entered) for t in trains if t.entered and t.fresh]
    compute = [(t.first_step, t.first_step + t.compute) for t in trains if t.first_step]
    on_wall = _union(starting + compute) - _union(compute)
    out = {"ray_train_on_wall_seconds": on_wall,
           "wall_over_compute_without_ray_train": (figures["wall_seconds"] - on_wall) / max(
               figures["train_compute_seconds"] + figures["eval_seconds"], 1e-9)}
    if bare and figures.get("job_ready_seconds_min"):
        out["job_ready_over_bare_without_ray_train"] = (figures["job_ready_seconds_min"] - fixed) / bare
    return out


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def analyse(run_dir: Path, command_seconds: float | None = None) -> dict:
    run_start, report, trains, evals = spans(run_dir)
    driver = (run_dir / "logs" / "driver.log").read_text()
    ray_line = re.search(r"^\[\s*(\d+)s\] ray\s+started", driver, re.M)
    data_line = re.search(r"prepared .* in ([0-9.]+) s", driver)
    first_job = min([t.submitted for t in trains] + [e.start for e in evals])
    compute = [(t.first_step, t.first_step + t.compute) for t in trains if t.first_step]
    evaluating = [(e.start, e.end) for e in evals]
    wall = report - run_start
    figures = {
        "run": str(run_dir),
        "command_seconds": command_seconds,
        "wall_seconds": wall,
        "driver_to_first_job_seconds": first_job - run_start,
        "ray_start_seconds_at": int(ray_line.group(1)) if ray_line else None,
        "data_preparation_seconds": float(data_line.group(1)) if data_line else 0.0,
        "train_jobs": sum(t.fresh for t in trains),
        "train_tasks": len(trains),
        "train_start_seconds": sum(t.entered - t.submitted for t in trains if t.entered and t.fresh),
        "train_engine_seconds": sum(t.first_step - t.entered for t in trains if t.first_step and t.entered),
        "train_compute_seconds": sum(t.compute for t in trains),
        "train_end_seconds": sum(t.finished - t.first_step - t.compute for t in trains if t.first_step),
        "eval_jobs": len(evals),
        "eval_seconds": sum(e.end - e.start for e in evals),
        "report_seconds": report - max([t.finished for t in trains] + [e.end for e in evals]),
        "wall_with_training_compute": _union(compute),
        "wall_with_evaluation": _union(evaluating),
        "wall_with_either": _union(compute + evaluating),
        "eval_during_training_seconds": _union(evaluating) + _union(compute) - _union(compute + evaluating),
    }
    figures["wall_with_neither"] = wall - figures["wall_with_either"]
    # Ray Train's start includes waiting for free CPUs behind other jobs; the quickest job's start
    # is the closest to its fixed cost.
    ready = sorted(t.first_step - t.submitted for t in trains if t.first_step and t.fresh)
    figures["job_ready_seconds_min"] = ready[0] if ready else None
    figures["job_ready_seconds_median"] = ready[len(ready) // 2] if ready else None
    # A task on kept workers: from the task before's weights written (their file's time; the driver
    # sees them up to half a second later) to its first step. The task before is the journal's
    # "after" (in a job of several methods, the last task of the method before), else the
    # method's own previous task.
    switches = []
    for t in trains:
        method, task = (t.after or t.label).split("/")
        before = run_dir / "models" / method / f"c_{int(task) - (0 if t.after else 1)}.safetensors"
        if not t.fresh and t.first_step and before.is_file():
            switches.append(t.first_step - before.stat().st_mtime)
    switches.sort()
    figures["next_task_seconds_median"] = switches[len(switches) // 2] if switches else None
    # The target's measure: the wall over the compute summed over jobs (jobs computing side by side
    # count each). The same wall over the time anything computed (overlaps counted once) says how
    # much of the wall nothing computed.
    figures["wall_over_compute"] = wall / max(figures["train_compute_seconds"] + figures["eval_seconds"], 1e-9)
    figures["wall_over_computing_time"] = wall / max(figures["wall_with_either"], 1e-9)
    return figures


def _print(f: dict) -> None:
    n, tasks = max(f["train_jobs"], 1), max(f.get("train_tasks", f["train_jobs"]), 1)
    print()
    if f["command_seconds"]:
        print(f"command wall time            {f['command_seconds']:8.1f} s   (process start to exit)")
    print(f"run wall time                {f['wall_seconds']:8.1f} s   (driver start to report)")
    print(f"  driver start → first job   {f['driver_to_first_job_seconds']:8.1f} s   "
          f"(data preparation {f['data_preparation_seconds']:.1f} s, Ray up at {f['ray_start_seconds_at']} s)")
    print(f"train jobs                   {f['train_jobs']:8d}   (Ray Train jobs, each training its methods' "
          f"tasks in turn: {tasks} tasks)")
    print(f"  start (Ray Train)          {f['train_start_seconds']:8.1f} s   {f['train_start_seconds'] / n:6.1f} s/job")
    print(f"  engine (model, stream, DS) {f['train_engine_seconds']:8.1f} s   {f['train_engine_seconds'] / tasks:6.1f} s/task")
    print(f"  compute (training loop)    {f['train_compute_seconds']:8.1f} s   {f['train_compute_seconds'] / tasks:6.1f} s/task")
    print(f"  end (consolidate, write)   {f['train_end_seconds']:8.1f} s   {f['train_end_seconds'] / tasks:6.1f} s/task")
    print(f"  submitted → first step     {f['job_ready_seconds_min']:8.1f} s   at the quickest job "
          f"(median {f['job_ready_seconds_median']:.1f} s: waiting for CPUs included)")
    if f.get("next_task_seconds_median") is not None:
        print(f"  c_i written → next task's first step {f['next_task_seconds_median']:4.1f} s   "
              "(median, the job's workers kept)")
    if f.get("bare_start_seconds"):
        print(f"  bare launch → first step   {f['bare_start_seconds']:8.1f} s   (the same worker without Ray: "
              f"process start, imports, process group, engine); quickest job / bare = "
              f"{f['job_ready_seconds_min'] / f['bare_start_seconds']:.2f} (target ≤ 1.5)")
    if f.get("ray_train_fixed_seconds"):
        print(f"  Ray Train, empty function  {f['ray_train_fixed_seconds']:8.1f} s   (TorchTrainer.fit of a function "
              "that does nothing, same workers: Ray Train's own cost per job)")
    print(f"eval jobs                    {f['eval_jobs']:8d}   {f['eval_seconds']:8.1f} s in all")
    print(f"report                       {f['report_seconds']:8.1f} s")
    print("on the wall clock:")
    print(f"  some training computing    {f['wall_with_training_compute']:8.1f} s")
    print(f"  some evaluation running    {f['wall_with_evaluation']:8.1f} s   "
          f"({f['eval_during_training_seconds']:.1f} s of it while training computed)")
    print(f"  neither (start-up, idle)   {f['wall_with_neither']:8.1f} s   "
          f"({f['wall_with_neither'] / f['wall_seconds']:.0%} of the wall time)")
    print(f"wall / (train + eval compute) = {f['wall_over_compute']:.2f}   (target ≤ 2; compute summed over jobs)")
    print(f"wall / (time anything computed) = {f['wall_over_computing_time']:.2f}   (overlapping jobs counted once)")
    if f.get("ray_train_on_wall_seconds") is not None:
        print(f"without Ray Train's own cost per job ({f['ray_train_fixed_seconds']:.1f} s each, "
              f"{f['ray_train_on_wall_seconds']:.1f} s of the wall clock):")
        if f.get("job_ready_over_bare_without_ray_train") is not None:
            print(f"  (quickest job − Ray Train) / bare launch = {f['job_ready_over_bare_without_ray_train']:.2f}"
                  "   (target ≤ 1.5)")
        print(f"  (wall − Ray Train) / (train + eval compute) = {f['wall_over_compute_without_ray_train']:.2f}"
              "   (target ≤ 2)")


def plot_timeline(run_dir: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_start, report, trains, evals = spans(run_dir)
    methods = list(dict.fromkeys(t.method for t in trains))
    lanes: list[float] = []  # eval lanes: when each lane is free again
    placed = []
    for e in evals:
        lane = next((i for i, free in enumerate(lanes) if free <= e.start), len(lanes))
        lanes[lane:lane + 1] = [e.end] if lane < len(lanes) else lanes.append(e.end) or []
        placed.append((lane, e))
    rows = len(methods) + max(len(lanes), 1)
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.45 * rows))
    colours = {"start": "#bbbbbb", "engine": "#f0a030", "compute": "#2060c0", "end": "#a04080", "eval": "#30a050"}
    for t in trains:
        y = methods.index(t.method)
        pieces = [("start", t.submitted, t.entered), ("engine", t.entered, t.first_step),
                  ("compute", t.first_step, t.first_step + t.compute if t.first_step else None),
                  ("end", t.first_step + t.compute if t.first_step else None, t.finished)]
        for kind, a, b in pieces:
            if a is not None and b is not None and b > a:
                ax.barh(y, b - a, left=a - run_start, color=colours[kind], height=0.6)
        ax.text(t.submitted - run_start, y + 0.36, t.label.split("/")[1], fontsize=7)
    for lane, e in placed:
        ax.barh(len(methods) + lane, e.end - e.start, left=e.start - run_start, color=colours["eval"], height=0.6)
    ax.set_yticks(range(rows), [f"train {m}" for m in methods] + [f"eval {i + 1}" for i in range(rows - len(methods))])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the driver started")
    ax.set_xlim(0, report - run_start)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, ["train: Ray Train start", "train: engine + stream + model", "train: compute",
                        "train: consolidate + write c_i", "evaluation"], loc="upper center", ncol=5, fontsize=7,
              bbox_to_anchor=(0.5, 1.0 + 1.2 / rows))
    ax.set_title(f"{run_dir.name}: jobs over time", pad=28)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
