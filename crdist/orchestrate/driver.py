"""The driver: set up a study (run directory, shards, c_0, Ray), let the scheduler run its jobs,
and write the report.

Each method's train job is a Ray Train TorchTrainer run whose workers train its tasks in turn
(launched from a Ray task so that several can be in flight); each eval job is a Ray task. Finished jobs leave files in the run directory (weights,
eval JSON) and lines in its journal, so rerunning the same command (or ``crdist resume``) continues
where the last run stopped, resuming the task in progress from its latest checkpoint.

SIGTERM or Ctrl-C asks the running train jobs to checkpoint and stop within
``checkpoint.grace_seconds``; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import os
import signal
import traceback
from contextlib import contextmanager
from pathlib import Path

from crdist import audit
from crdist.data.manifest import Manifest
from crdist.data.prepare import prepare
from crdist.data.stream import RankStream, StreamSpec
from crdist.errors import CrdistError
from crdist.models.classifier import build_classifier
from crdist.models.pretrained import load_init
from crdist.models.weights import load_into, save_weights
from crdist.orchestrate import claim, pretrain
from crdist.orchestrate.cluster import ray_cluster
from crdist.orchestrate.console import Console
from crdist.orchestrate.journal import Journal
from crdist.orchestrate.leftovers import end_leftovers, end_processes, mark_environment, processes_of_run
from crdist.rundir import RunDir
from crdist.orchestrate.scheduler import Scheduler, StudyError, StudyStopped, eval_count
from crdist.track.fanout import Tracking
from crdist.track.history import marker as tracking_marker
from crdist.track.scalars import Plan


def run_study(study, config_source: str, address: str | None = None, directory: Path | None = None):
    """Run every job of ``study`` that is not done yet and write its report; returns its summary."""
    run_dir = RunDir(directory or Path(study.runs_dir) / study.name)
    with claim.hold(run_dir), _own_processes(run_dir) as ended:
        return _drive(study, config_source, address, run_dir, ended)


@contextmanager
def _own_processes(run_dir: RunDir):
    """Mark the processes of this driver's embedded Ray cluster as this run's; end those an earlier,
    killed driver of the run left behind, and this driver's own stragglers when it ends (see
    ``leftovers``)."""
    saved = dict(os.environ)
    token = mark_environment(run_dir.root)
    try:
        yield end_leftovers(run_dir.root, token)
    finally:
        end_processes(processes_of_run(run_dir.root))
        os.environ.clear()
        os.environ.update(saved)


def _drive(study, config_source: str, address: str | None, run_dir: RunDir, leftovers: list[int]):
    resumed = claim.admit(run_dir, study)
    console = Console(run_dir.logs)
    journal = Journal(run_dir.journal)
    journal.record_run_start(resumed)
    if leftovers:
        console.print(f"ray    ended {len(leftovers)} process(es) that an earlier, killed driver of this run left "
                      f"running (pids {', '.join(map(str, leftovers))})")
    signals = _StopOnSignals()
    tracking, outcome = None, "failed"
    try:
        with signals:
            console.print(
                f"crdist run {study.name}: config {config_source} → {run_dir.root}{' (continuing)' if resumed else ''}"
            )
            tracking = Tracking.open(study.tracking, study.name, run_dir, console.print)
            summary = _run(study, run_dir, address, console, journal, signals, tracking)
            outcome = "finished"
            return summary
    except KeyboardInterrupt:  # a second Ctrl-C
        outcome = "stopped"
        raise
    except StudyStopped as err:
        outcome = "stopped"
        journal.record("run-stopped", signal=err.signal_name)
        console.log_only(f"stop   {err}")
        raise
    except CrdistError as err:
        console.log_only(f"error  {err}")
        if err.__cause__ is not None:  # the full story behind a failed job, for the log only
            console.log_only("".join(traceback.format_exception(err.__cause__)))
        raise
    finally:
        if tracking is not None:
            tracking.close(outcome)
        console.close()


def _run(study, run_dir: RunDir, address: str | None, console: Console, journal: Journal, signals: "_StopOnSignals",
         tracking: Tracking | None):
    from crdist.report.write import write_report

    train = study.train
    manifest = prepare(study.data, log=lambda line: console.print(f"data   {line}"))
    _check_modality(study, manifest)
    manifest.save(run_dir.root)  # a copy, so the report can be rebuilt from the run directory alone
    console.print(f"data   {_describe_stream(manifest)}")
    steps = _steps_per_task(study, manifest)
    _feed_trackers(tracking, steps, run_dir, console)
    damage = audit.initial_model(run_dir) if run_dir.weights(None, 0).is_file() else None
    if damage is not None:
        audit.set_aside(damage, run_dir.root, journal, console.print)
    # c_0, once written, is the run's source of truth: a resumed run needs no pretrain stage.
    pretraining = pretrain.plan(study, manifest, console.print) if not run_dir.weights(None, 0).is_file() else None
    if pretraining is None:
        _write_initial_model(study, manifest, run_dir, console)
    console.print(
        f"plan   {len(train.methods)} method(s) [{', '.join(train.methods)}] × {len(manifest.tasks)} tasks = "
        f"{len(train.methods) * len(manifest.tasks)} train tasks of {_describe_steps(steps)} "
        f"({train.workers} workers × batch {train.batch_size}, ZeRO-{train.zero_stage}; a Ray Train job for each "
        f"method the cluster trains at once, the others after it on the same workers); "
        f"{eval_count(study, manifest)} eval jobs [{', '.join(study.evaluate.protocols)}]; "
        f"checkpoints {_describe_checkpoints(study.checkpoint)}"
    )
    with ray_cluster(study, address, console.print):
        signals.reinstall()
        if not train.use_gpu:
            _build_deepspeed_cpu_ops(console)
        scheduler = Scheduler(study, run_dir, manifest, console, journal)
        signals.scheduler = scheduler
        try:
            if pretraining is not None:
                pretrain.train(pretraining, scheduler, console, journal)
                _write_initial_model(study, manifest, run_dir, console, pretraining)
            scheduler.run_jobs()
        finally:
            signals.scheduler = None
    summary = write_report(run_dir, study, manifest)
    journal.record("report")
    console.record({"kind": "report", "tasks": len(manifest.tasks), "metrics": summary.metrics})
    console.print(f"done   study finished in {console.elapsed():.0f} s; report in {run_dir.report}")
    console.plain(summary.table)
    return summary


def _feed_trackers(tracking: Tracking | None, steps: dict, run_dir: RunDir, console: Console) -> None:
    """Catch the trackers up from events.jsonl and hand them every event from now on. The file
    notes which trackers each driver run feeds (none too): how a later run knows what they hold."""
    if tracking is None:
        console.record(tracking_marker([]))
        return
    tracking.begin(Plan(steps), run_dir.logs / "events.jsonl", console.record)
    console.follow(tracking.record)
    console.print(f"track  {tracking.describe(run_dir.tracking) or 'no tracker'}")


def _check_modality(study, manifest: Manifest) -> None:
    from crdist.methods import METHODS
    from crdist.models.backbones import BACKBONES

    takes = BACKBONES.get(study.model.backbone).modality
    if takes != manifest.modality:
        raise StudyError(f"benchmark {manifest.benchmark} streams {manifest.modality}, but model.backbone "
                         f"{study.model.backbone} takes {takes}")
    for name in study.train.methods:
        if manifest.modality not in METHODS.get(name).modalities:
            raise StudyError(f"method {name} trains on {' or '.join(METHODS.get(name).modalities)} inputs only, but "
                             f"benchmark {manifest.benchmark} streams {manifest.modality}; leave {name} out of "
                             f"train.methods")
    if study.data.augment != "none" and manifest.modality != "image":
        raise StudyError(f"data.augment={study.data.augment} augments images, but benchmark {manifest.benchmark} "
                         f"streams {manifest.modality}; set data.augment: none")


def _describe_stream(manifest: Manifest) -> str:
    counts = {s: sum(t.splits[s].count for t in manifest.tasks) for s in ("train", "test", "adapt")}
    image = manifest.image
    content = f"{image.channels}×{image.height}×{image.width} images" if image else "text"
    tasks = ", ".join(t.name for t in manifest.tasks) if not manifest.tasks[0].name.startswith("task-") else ""
    return (
        f"{manifest.benchmark}: {len(manifest.tasks)} tasks{f' ({tasks})' if tasks else ''}, "
        f"{len(manifest.class_names)} classes, {counts['train']:,} train / {counts['test']:,} test / "
        f"{counts['adapt']:,} adaptation samples, {content}"
        + (f"; {len(manifest.skipped)} unreadable samples skipped" if manifest.skipped else "")
    )


def _steps_per_task(study, manifest: Manifest) -> dict[tuple[str, int], int]:
    """Steps each (method, task) job will stream, computed as every worker will; fails before any
    job starts when a task cannot give every worker at least one batch."""
    from crdist.methods.base import method_class

    train = study.train
    steps = {}
    for method, task in [(m, t) for m in train.methods for t in manifest.tasks]:
        also = tuple(t for t in method_class(method).tasks_to_stream(task.index) if t != task.index)
        accumulation = train.accumulation(train.workers)
        spec = StreamSpec(task.index, "train", 0, train.workers, train.batch_size, 0, 1, study.seed, also,
                          train.data_order, accumulation=accumulation)
        stream = RankStream(manifest, spec)  # checks that every worker gets shards
        per_epoch = [stream.steps_in_epoch(e) // accumulation for e in range(train.epochs)]
        if min(per_epoch) == 0:
            raise StudyError(
                f"task {task.index}: with {train.workers} workers × batch {train.batch_size}, some worker holds "
                f"less than one batch in an epoch; lower train.batch_size or train.workers"
            )
        steps[(method, task.index)] = min(sum(per_epoch), train.max_steps or sum(per_epoch))
    return steps


def _describe_steps(steps: dict) -> str:
    low, high = min(steps.values()), max(steps.values())
    return f"{low} steps" if low == high else f"{low}–{high} steps"


def _describe_checkpoints(cfg) -> str:
    when = [f"every {cfg.every_steps} steps"] if cfg.every_steps else []
    when += [f"every {cfg.every_minutes:g} min"] if cfg.every_minutes else []
    return f"{' and '.join(when) or 'at task end only'}, keep {cfg.keep}"


class _StopOnSignals:
    """SIGTERM (what schedulers send before preemption) and Ctrl-C stop the study cleanly: while
    jobs run, the scheduler asks them to checkpoint and stop; before or after (preparing data,
    starting Ray, writing the report: all atomic), the driver stops at once. A second Ctrl-C
    always stops at once."""

    def __init__(self):
        self.scheduler: Scheduler | None = None
        self.previous = {}

    def __enter__(self) -> "_StopOnSignals":
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def reinstall(self) -> None:
        """After ``ray.init``, which puts its own handlers in place (one aborts the process)."""
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.handle)

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.scheduler is None:
            raise StudyStopped(f"stopped on {name} while no job was running; run the same command to continue", name)
        if signum == signal.SIGINT and self.scheduler.stop_signal:
            raise KeyboardInterrupt
        self.scheduler.stop_signal = name  # acted on by the scheduler's loop


def _write_initial_model(study, manifest: Manifest, run_dir: RunDir, console: Console,
                         pretraining: pretrain.Pretraining | None = None) -> None:
    path = run_dir.weights(None, 0)
    model = build_classifier(study.model, manifest.in_channels, manifest.num_classes, study.seed,
                             image_size=manifest.image_size)
    source = f"random (seed {study.seed})"
    if study.model.pretrained:
        source = f"backbone from {study.model.pretrained}, head random (seed {study.seed})"
    if pretraining is not None:
        # The source's head is for the source's classes: c_0 takes the backbone alone.
        load_into(model, pretraining.weights, backbone_only=True)
        source = (f"pretrained {pretraining.describe()} from {study.model.init or 'random'} "
                  f"({pretraining.directory.name}), head random (seed {study.seed})")
    elif study.model.init:
        source = study.model.init
        if not path.is_file():  # once written, c_0 is the source of truth, even if init moves
            notes = load_init(model, study.model)
            if study.model.init_file().suffix != ".safetensors":
                source = f"{source} (torchvision keys{'; ' + '; '.join(notes) if notes else ''}), head random"
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
    console.print("setup  compiling DeepSpeed's CPU comm op (once per Python environment, about a minute)")
    seconds = ray.get(build_deepspeed_cpu_op.remote())
    console.print(f"setup  compiled it in {seconds:.0f} s; later runs reuse it")
