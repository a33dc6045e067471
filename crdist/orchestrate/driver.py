"""The driver: plan a study's train and eval jobs, run them on Ray, and write the report.

    train(m, 1) → train(m, 2) → … → train(m, T)          one chain per method, all from c_0
    eval(c_i, j) for every task j, as soon as c_i exists  (overlaps training of task i+1)

Each train job is a Ray Train TorchTrainer run (launched from a Ray task so that several can be in
flight); each eval job is a Ray task. Finished jobs leave files in the run directory (weights,
eval JSON), so rerunning the same command on the same run directory reuses them.
"""

from __future__ import annotations

import json
import math
import queue
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from crdist.data.manifest import Manifest
from crdist.data.prepare import prepare
from crdist.data.stream import RankStream, StreamSpec
from crdist.errors import CrdistError
from crdist.evaluate.job import EvalJob
from crdist.models.classifier import build_classifier
from crdist.models.weights import load_into, save_weights
from crdist.orchestrate.cluster import ray_cluster
from crdist.orchestrate.console import Console
from crdist.orchestrate.rundir import RunDir
from crdist.train.worker import TrainJob


class StudyError(CrdistError, RuntimeError):
    pass


def run_study(study, config_source: str, address: str | None = None):
    """Run every job of ``study`` and write its report; returns the report summary."""
    run = RunDir(Path(study.runs_dir) / study.name)
    resumed = run.open(study)
    console = Console(run.logs)
    try:
        console.print(f"crdist run {study.name}: config {config_source} → {run.root}{' (continuing)' if resumed else ''}")
        return _run(study, run, address, console)
    except CrdistError as err:
        console.log_only(f"error  {err}")
        if err.__cause__ is not None:  # the full story behind a failed job, for the log only
            console.log_only("".join(traceback.format_exception(err.__cause__)))
        raise
    finally:
        console.close()


def _run(study, run: RunDir, address: str | None, console: Console):
    from crdist.report.write import write_report

    train = study.train
    manifest = prepare(study.data, log=lambda line: console.print(f"data   {line}"))
    manifest.save(run.root)  # a copy, so the report can be rebuilt from the run directory alone
    console.print(f"data   {_describe_stream(manifest)}")
    steps = _steps_per_task(study, manifest)
    _write_initial_model(study, manifest, run, console)
    console.print(
        f"plan   {len(train.methods)} method(s) [{', '.join(train.methods)}] × {len(manifest.tasks)} tasks = "
        f"{len(train.methods) * len(manifest.tasks)} train jobs of {_describe_steps(steps)} "
        f"({train.workers} workers × batch {train.batch_size}, ZeRO-{train.zero_stage}); "
        f"{_eval_count(study, manifest)} eval jobs [{', '.join(study.evaluate.protocols)}]"
    )
    with ray_cluster(study, address, console.print):
        if not train.use_gpu:
            _build_deepspeed_cpu_ops(console)
        Scheduler(study, run, manifest, console).run()
    summary = write_report(run, study, manifest)
    console.print(f"done   study finished in {console.elapsed():.0f} s; report in {run.report}")
    console.plain(summary.table)
    return summary


def _describe_stream(manifest: Manifest) -> str:
    counts = {s: sum(t.splits[s].count for t in manifest.tasks) for s in ("train", "test", "adapt")}
    image = manifest.image
    return (
        f"{manifest.benchmark}: {len(manifest.tasks)} tasks of {len(manifest.tasks[0].classes)} classes, "
        f"{counts['train']:,} train / {counts['test']:,} test / {counts['adapt']:,} adaptation samples, "
        f"{image.channels}×{image.height}×{image.width} images"
    )


def _steps_per_task(study, manifest: Manifest) -> dict[int, int]:
    """Steps each task's job will run, computed as every worker will; fails before any job starts
    when a task cannot give every worker at least one batch."""
    train = study.train
    steps = {}
    for task in manifest.tasks:
        spec = StreamSpec(task.index, "train", 0, train.workers, train.batch_size, 0, 1, study.seed)
        stream = RankStream(manifest, spec)  # checks that every worker gets shards
        per_epoch = [stream.steps_in_epoch(e) for e in range(train.epochs)]
        if min(per_epoch) == 0:
            raise StudyError(
                f"task {task.index}: with {train.workers} workers × batch {train.batch_size}, some worker holds "
                f"less than one batch in an epoch; lower train.batch_size or train.workers"
            )
        steps[task.index] = min(sum(per_epoch), train.max_steps or sum(per_epoch))
    return steps


def _describe_steps(steps: dict[int, int]) -> str:
    low, high = min(steps.values()), max(steps.values())
    return f"{low} steps" if low == high else f"{low}–{high} steps"


def _eval_count(study, manifest: Manifest) -> int:
    return (1 + len(study.train.methods) * len(manifest.tasks)) * len(manifest.tasks)


def _write_initial_model(study, manifest: Manifest, run: RunDir, console: Console) -> None:
    path = run.weights(None, 0)
    model = build_classifier(study.model.backbone, manifest.image.channels, manifest.num_classes, study.seed)
    source = f"random (seed {study.seed})"
    if study.model.init:
        source = study.model.init
        if not path.is_file():  # once written, c_0 is the source of truth, even if init moves
            load_into(model, study.model.init, backbone_only=True)
    params = sum(p.numel() for p in model.parameters())
    console.print(
        f"model  {study.model.backbone} ({params / 1e6:.2f} M parameters), init: {source}; "
        f"head: {study.model.head} — one linear layer over all {manifest.num_classes} classes"
        + (", each task's loss masked to its own classes" if study.model.head == "per_task" else ", never re-initialised")
    )
    if not path.is_file():
        save_weights(model.state_dict(), path, metadata={"checkpoint": "c_0"})


def _build_deepspeed_cpu_ops(console: Console) -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory comm op on first use (~1 min, once per
    machine). Building it once, before any job, keeps the workers from racing to build it."""
    import ray

    from crdist.orchestrate.remote import build_deepspeed_cpu_op, deepspeed_cpu_op_cached

    if ray.get(deepspeed_cpu_op_cached.remote()):
        return
    console.print("setup  compiling DeepSpeed's CPU comm op (once per machine, about a minute)")
    seconds = ray.get(build_deepspeed_cpu_op.remote())
    console.print(f"setup  compiled it in {seconds:.0f} s; later runs reuse it")


@dataclass
class _JobState:
    kind: str  # "train" or "eval"
    label: str
    method: str | None
    row: int
    task: int


@dataclass
class _Progress:
    done: int = 0
    total: int = 0
    per_checkpoint: dict = field(default_factory=lambda: defaultdict(dict))


class Scheduler:
    def __init__(self, study, run: RunDir, manifest: Manifest, console: Console):
        from ray.util.queue import Queue

        self.study = study
        self.run_dir = run
        self.manifest = manifest
        self.console = console
        self.tasks = len(manifest.tasks)
        self.pending: dict = {}
        self.evals = _Progress(total=_eval_count(study, manifest))
        self.progress = Queue(actor_options={"num_cpus": 0})

    def run(self) -> None:
        import ray

        for task in range(1, self.tasks + 1):
            self.submit_eval(None, 0, task)
        for method in self.study.train.methods:
            self.submit_train(method, 1)
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=0.5)
            self.drain_progress()
            for ref in ready:
                self.finish(ref)
        self.drain_progress()

    # -- submission ---------------------------------------------------------------------------

    def submit_train(self, method: str, task: int) -> None:
        from crdist.orchestrate.remote import fit_train_job

        output = self.run_dir.weights(method, task)
        label = f"{method} task {task}/{self.tasks}"
        if output.is_file():
            self.console.print(f"train  {label}: already done, reusing {output.relative_to(self.run_dir.root)}")
            self.trained(method, task)
            return
        job = TrainJob(
            study=self.study,
            method=method,
            task=task,
            num_tasks=self.tasks,
            shards=str(self.manifest.root),
            init_weights=str(self.run_dir.weights(method, task - 1).resolve()),
            output=str(output.resolve()),
            log_dir=str((self.run_dir.logs / "train").resolve()),
        )
        ref = fit_train_job.remote(job, self.progress, self.run_dir.ray_storage.resolve(), self.study.name)
        self.pending[ref] = _JobState("train", label, method, task, task)

    def submit_eval(self, method: str | None, row: int, task: int) -> None:
        from crdist.orchestrate.remote import run_eval_job

        output = self.run_dir.evaluation(method, row, task)
        checkpoint = RunDir.checkpoint_label(method, row)
        if output.is_file():
            self.evaluated(method, row, task, json.loads(output.read_text()))
            return
        job = EvalJob(
            study=self.study,
            checkpoint=checkpoint,
            row=row,
            task=task,
            weights=str(self.run_dir.weights(method, row).resolve()),
            shards=str(self.manifest.root),
            output=str(output.resolve()),
        )
        cpus = self.study.evaluate.cpus
        ref = run_eval_job.options(num_cpus=cpus).remote(job, max(1, math.floor(cpus)))
        self.pending[ref] = _JobState("eval", job.label, method, row, task)

    # -- completion ---------------------------------------------------------------------------

    def finish(self, ref) -> None:
        import ray

        state = self.pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as err:  # a job failed: stop the study and say which job and where to look
            raise StudyError(
                f"{state.kind} job '{state.label}' failed: {_root_cause(err)}\n"
                f"Logs: {self.run_dir.logs} (driver.log, train/*.log); Ray's own logs under /tmp/ray/session_latest/logs"
            ) from err
        if state.kind == "train":
            self.console.print(
                f"train  {state.label} done: {result['steps']} steps in {result['seconds']:.1f} s "
                f"({result['samples_per_second']:,.0f} samples/s), loss {result['first_loss']:.3f} → "
                f"{result['final_loss']:.3f}"
            )
            self.console.record({"kind": "train_done", "job": state.label, **result})
            self.trained(state.method, state.task)
        else:
            self.evaluated(state.method, state.row, state.task, result)

    def trained(self, method: str, task: int) -> None:
        for j in range(1, self.tasks + 1):
            self.submit_eval(method, task, j)
        if task < self.tasks:
            self.submit_train(method, task + 1)

    def evaluated(self, method: str | None, row: int, task: int, result: dict) -> None:
        self.evals.done += 1
        checkpoint = RunDir.checkpoint_label(method, row)
        done = self.evals.per_checkpoint[checkpoint]
        done[task] = result["accuracy"]
        self.console.record({"kind": "eval_done", **result})
        if len(done) == self.tasks:
            means = "  ".join(
                f"{p} {sum(r[p] for r in done.values()) / self.tasks:.3f}" for p in self.study.evaluate.protocols
            )
            self.console.print(
                f"eval   {checkpoint} on tasks 1–{self.tasks}: mean accuracy {means}  "
                f"[{self.evals.done}/{self.evals.total} evals]"
            )

    def drain_progress(self) -> None:
        while True:
            try:
                event = self.progress.get_nowait()
            except queue.Empty:
                return
            self.console.record(event)
            self.console.print(
                f"train  {event['method']} task {event['task']}/{event['tasks']}  step {event['step']:>4}/"
                f"{event['steps']}  {event['phase']:<8} loss {event['loss']:.4f}  lr {event['lr']:.2e}  "
                f"{event['samples_per_s']:,.0f} samples/s"
            )


def _root_cause(err: BaseException) -> str:
    """The innermost error behind Ray's wrappers (task errors, Ray Train's worker-group error)."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        failures = getattr(err, "worker_failures", None)  # ray.train.WorkerGroupError: rank → error
        if failures:
            rank = min(failures)
            return f"rank {rank}: {_root_cause(failures[rank])}"
        inner = getattr(err, "cause", None) or err.__cause__
        if inner is None:
            break
        err = inner
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:
        return text.splitlines()[-1]  # a re-raised error (e.g. from a loader process): its last line
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
