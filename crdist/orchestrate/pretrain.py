"""The pretrain stage: c_0's backbone trained on a *source* stream before the study's tasks.

The paper's question is about continuing to pretrain a backbone that was pretrained first, and its
answer depends on that initial pretraining. ``pretrain:`` builds such a start from data crdist
prepares (any benchmark, or a local ``hf`` / ``imagefolder`` dataset)::

    pretrain:
      steps: 600                 # 0 (the default) = no stage: c_0 is model.init or random
      data: {benchmark: seq-fashion-mnist, class_order: [6, 7, 8, 9, 0, 1, 2, 3, 4, 5], classes_per_task: 4, tasks: 1}

The stage trains the study's model (from ``model.init`` when set) on every task of the source
stream at once (the ``joint`` method at its last task) for ``steps`` optimizer steps, with the
study's ``train:`` recipe (``pretrain.lr`` / ``pretrain.batch_size`` override two of its settings).
It is a Ray Train job like any task's: the same workers, ZeRO stage, mid-task checkpoints and exact
resume. Its result is kept under ``pretrain.dir`` (default ``pretrained/``, beside ``shards/``) in a
directory named by a **fingerprint** of everything that determines it: the model config and the
bytes of ``model.init``, the source shards' hashes, the recipe and ``pretrain.seed``. Every method
of a study, every rerun, and every sweep point with the same fingerprint starts from that one
result, trained once; a change of any of those settings trains a new one. Two drivers that need the
same start at once take turns through a lock: the second waits, then reuses it.

c_0 is then that backbone with the study's own head (random, seeded by the study's seed): the
source's head is for the source's classes. With ``pretrain.steps`` as a sweep axis, 0 included, a
sweep measures how the initial pretraining changes the effect.

``pretrain.seed`` is fixed (0) by default, not the study's seed: like a published checkpoint, one
pretrained start serves every seed of a sweep, and the seeds vary what the study itself draws.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import queue
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from crdist import config
from crdist.config import require
from crdist.data.config import DataConfig
from crdist.data.shards import sha256_of
from crdist.errors import CrdistError

SOURCE_METHOD = "joint"  # every task of the source stream at once
WEIGHTS = "pretrained.safetensors"
FINGERPRINT_FILE = "fingerprint.json"
# train: settings that change where or how a job executes, never what it computes.
_EXECUTION_ONLY = ("methods", "log_every", "max_failures", "max_preemption_failures", "placement", "decoded_cache_mb")


class PretrainError(CrdistError, RuntimeError):
    pass


@dataclass(frozen=True)
class PretrainConfig:
    """An optional pretrain stage on a source stream before T1: its result is c_0."""

    steps: int = 0
    """Optimizer steps on the source stream; 0 = no pretrain stage (c_0 is model.init or random)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The source stream, a data: section of its own (any benchmark crdist prepares). Its tasks are
    trained on together; hold back classes or domains of the study's own dataset with its
    class_order / tasks options."""
    lr: float | None = None
    """Peak learning rate of the pretrain stage; null = train.lr."""
    batch_size: int | None = None
    """Samples per worker per micro-batch; null = train.batch_size."""
    seed: int = 0
    """Seeds the source head, the stream's order and the training; fixed by default, so every seed
    of a sweep starts from the same pretrained backbone (as from a published checkpoint)."""
    dir: str = "pretrained"
    """Where pretrained starts are kept, one directory per fingerprint, shared by runs and sweeps."""

    def validate(self) -> None:
        require(self.steps >= 0, "steps", f"must be 0 (no pretrain stage) or more (got {self.steps})")
        require(self.lr is None or self.lr > 0, "lr", f"must be positive or null (got {self.lr})")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size",
                f"must be at least 1 or null (got {self.batch_size})")

    @property
    def enabled(self) -> bool:
        return self.steps > 0


@dataclass(frozen=True)
class Pretraining:
    """One planned pretrain stage: its train job's settings, fingerprint and directory."""

    study: object  # the study as the source job sees it (source data, recipe, pretrain seed)
    manifest: object  # the source stream's manifest
    fingerprint: str
    directory: Path

    @property
    def weights(self) -> Path:
        return self.directory / WEIGHTS

    def describe(self) -> str:
        data = self.study.data
        return (f"{self.study.train.max_steps} steps on {data.benchmark} ({len(self.manifest.tasks)} task(s), "
                f"classes {', '.join(self.manifest.class_names[c] for t in self.manifest.tasks for c in t.classes)})")


def plan(study, target, log) -> Pretraining | None:
    """Prepare the source stream and fix the stage's settings; None when the study has none.
    ``target``: the study's own manifest (the source must feed the same backbone input)."""
    cfg = study.pretrain
    if not cfg.enabled:
        return None
    from crdist.data.prepare import prepare

    manifest = prepare(cfg.data, log=lambda line: log(f"source {line}"))
    if manifest.modality != target.modality or manifest.in_channels != target.in_channels \
            or manifest.image_size != target.image_size:
        raise PretrainError(
            f"pretrain.data ({cfg.data.benchmark}) streams {_inputs(manifest)}, but the study's tasks stream "
            f"{_inputs(target)}: the one backbone must take both; set pretrain.data.image_size or data.image_size")
    train = dataclasses.replace(
        study.train, methods=[SOURCE_METHOD], lr=cfg.lr or study.train.lr,
        batch_size=cfg.batch_size or study.train.batch_size, max_steps=cfg.steps,
        epochs=_epochs_for(cfg.steps, study.train, cfg, manifest),
    )
    source = dataclasses.replace(study, data=cfg.data, train=train, seed=cfg.seed)
    fingerprint = _fingerprint(source, manifest)
    directory = Path(cfg.dir) / f"{cfg.data.benchmark}-{study.model.backbone}-{cfg.steps}steps-{fingerprint[:12]}"
    return Pretraining(source, manifest, fingerprint, directory.resolve())


def train(stage: Pretraining, scheduler, console, journal) -> None:
    """Make sure ``stage.weights`` exists: reuse it, or train it on the cluster as a Ray Train job
    (resuming its latest checkpoint). Runs under a lock held by one driver at a time."""
    stage.directory.mkdir(parents=True, exist_ok=True)
    with _turn(stage.directory, scheduler, console):
        if stage.weights.is_file():
            console.print(f"pretrain reusing {stage.directory} ({stage.describe()}), trained earlier")
            journal.record("finished", "pretrain", fingerprint=stage.fingerprint, reused=True)
            return
        _write_fingerprint(stage)
        job = _train_job(stage)
        journal.record("started", "pretrain", fingerprint=stage.fingerprint, directory=str(stage.directory))
        console.print(f"pretrain {stage.describe()} → {stage.directory}")
        _fit(job, stage, scheduler, console)
    summary = json.loads(stage.weights.with_suffix(".train.json").read_text())
    journal.record("finished", "pretrain", fingerprint=stage.fingerprint, steps=summary["steps"],
                   resumed_from=summary["resumed_from"])
    console.print(
        f"pretrain done: {summary['steps']} steps"
        + (f" (resumed at step {summary['resumed_from']})" if summary["resumed_from"] else "")
        + f" in {summary['seconds']:.1f} s, loss {summary['first_loss']:.3f} → {summary['final_loss']:.3f}")


def _train_job(stage: Pretraining):
    """The source job, starting from the study's model as c_0 would be without the stage."""
    from crdist.models.classifier import build_classifier
    from crdist.models.pretrained import load_init
    from crdist.models.weights import save_weights
    from crdist.train.job import TrainJob

    study, manifest, directory = stage.study, stage.manifest, stage.directory
    start = directory / "start.safetensors"
    if not start.is_file():
        model = build_classifier(study.model, manifest.in_channels, manifest.num_classes, study.seed,
                                 image_size=manifest.image_size)
        if study.model.init:
            load_init(model, study.model)
        save_weights(model.state_dict(), start, metadata={"checkpoint": "pretrain start"})
    last = len(manifest.tasks)
    return TrainJob.from_study(
        study, SOURCE_METHOD, task=last, num_tasks=last, shards=str(manifest.root), init_weights=str(start),
        output=str(stage.weights), checkpoints=str(directory / "checkpoints"), log_dir=str(directory / "logs"))


def _fit(job, stage: Pretraining, scheduler, console) -> None:
    """Run the job to its end, printing its progress; a stop signal checkpoints it and stops."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from crdist.orchestrate.remote import fit_train_job
    from crdist.orchestrate.scheduler import StudyError, StudyStopped, _root_cause

    ref = fit_train_job.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(scheduler.driver_node, soft=False)
    ).remote([job], scheduler.progress, scheduler.stop_flag, (stage.directory / "ray"), "pretrain")
    while True:
        if scheduler.stop_signal:
            scheduler.request_stop(scheduler.stop_signal)
        ready, _ = ray.wait([ref], timeout=0.5)
        _print_progress(scheduler, console)
        if ready:
            break
    try:
        stopped = ray.get(ref)["stopped"]
    except Exception as err:
        raise StudyError(f"the pretrain job failed: {_root_cause(err)}\nLogs: {stage.directory / 'logs'}") from err
    if stopped or not stage.weights.is_file():
        raise StudyStopped(f"stopped on {scheduler.stop_reason or 'request'} while pretraining; its checkpoint in "
                           f"{stage.directory} is kept: run the same command again to continue",
                           scheduler.stop_reason or "SIGTERM")


def _print_progress(scheduler, console) -> None:
    """The job's progress events, as the driver prints a task's (not recorded for the trackers,
    whose steps are the study's own tasks)."""
    while True:
        try:
            event = scheduler.progress.get_nowait()
        except queue.Empty:
            return
        except Exception:  # progress is best effort
            return
        if event["kind"] == "train":
            console.print(f"pretrain step {event['step']:>5}/{event['steps']}  loss {event['loss']:.4f}  "
                          f"lr {event['lr']:.2e}  {event['samples_per_s']:,.0f} samples/s")
        elif event["kind"] == "start" and event["step"]:
            console.print(f"pretrain resuming from the checkpoint at step {event['step']}/{event['steps']}")
        elif event["kind"] == "checkpoint":
            console.print(f"pretrain step {event['step']} saved" + (", stopping" if event["stopping"] else ""))


class _turn:
    """One driver at a time in a pretrain directory; the others wait for it (and then reuse its
    result). A driver asked to stop while it waits stops."""

    def __init__(self, directory: Path, scheduler, console):
        self.path = directory / ".lock"
        self.scheduler, self.console = scheduler, console

    def __enter__(self):
        from crdist.orchestrate.scheduler import StudyStopped

        self.handle = open(self.path, "a+")
        said = False
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    self.handle.seek(0)
                    self.console.print(f"pretrain waiting: {self.path.parent} is being trained by another driver "
                                       f"({self.handle.read().strip() or 'unknown'})")
                    said = True
                if self.scheduler.stop_signal:
                    raise StudyStopped(f"stopped on {self.scheduler.stop_signal} while waiting for the pretrain "
                                       "stage; run the same command again to continue", self.scheduler.stop_signal)
                time.sleep(1.0)
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.handle.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _epochs_for(steps: int, train, cfg: PretrainConfig, manifest) -> int:
    """Enough epochs of the source stream for ``steps`` optimizer steps (the job stops there)."""
    from crdist.data.stream import RankStream, StreamSpec

    last = len(manifest.tasks)
    spec = StreamSpec(last, "train", 0, train.workers, cfg.batch_size or train.batch_size, 0, 1, cfg.seed,
                      tuple(range(1, last)), train.data_order, accumulation=train.accumulation(train.workers))
    per_epoch = RankStream(manifest, spec).steps_in_epoch(0) // spec.accumulation
    if per_epoch == 0:
        raise PretrainError(f"pretrain.data: with {train.workers} workers × batch {spec.batch_size}, some worker "
                            "holds less than one batch of the source stream; lower pretrain.batch_size")
    return math.ceil(steps / per_epoch) + 1  # one spare: an epoch may give a worker a batch fewer


def _fingerprint(source, manifest) -> str:
    """sha256 of everything that determines the pretrained weights, as ``fingerprint.json`` lists it."""
    return hashlib.sha256(json.dumps(_fingerprint_inputs(source, manifest), sort_keys=True).encode()).hexdigest()


def _fingerprint_inputs(source, manifest) -> dict:
    train = config.to_dict(source.train)
    for key in _EXECUTION_ONLY:
        train.pop(key)
    if train["global_batch"] is not None:  # accumulated to the same global batch on any worker count
        train.pop("workers")
    model = config.to_dict(source.model)
    model.pop("init")
    init = source.model.init_file()
    return {
        "format": 1,
        "model": model,
        "init_sha256": sha256_of(init) if init else None,  # the file's bytes, not its path or name
        "source": {"benchmark": manifest.benchmark, "params": manifest.params,
                   "shards": [s.sha256 for t in manifest.tasks for split in t.splits.values() for s in split.shards]},
        "augment": source.data.augment,
        "train": train,
        "seed": source.seed,
    }


def _write_fingerprint(stage: Pretraining) -> None:
    from crdist.atomic import write_json

    path = stage.directory / FINGERPRINT_FILE
    if not path.is_file():
        write_json(path, {"fingerprint": stage.fingerprint, **_fingerprint_inputs(stage.study, stage.manifest)})


def _inputs(manifest) -> str:
    if manifest.modality == "text":
        return "text"
    image = manifest.image
    return f"{image.channels}×{image.height}×{image.width} images"
