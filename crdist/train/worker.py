"""One worker's continued pretraining on one task: setup → fit → save consolidated weights.

Runs in every rank of a job (a Ray Train worker, or any process group launched with the usual
RANK / WORLD_SIZE / MASTER_ADDR environment). All ranks run exactly the same number of steps.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from crdist.atomic import write_json, write_text
from crdist.data.manifest import Manifest
from crdist.data.samples import make_decoder, to_device
from crdist.data.stream import RankStream, StreamSpec
from crdist.methods.base import Method, Phase, TaskContext, build_method
from crdist.models.classifier import build_classifier
from crdist.models.weights import load_into, save_weights
from crdist.seeding import derive_seed
from crdist.train.checkpoint import JobLock, Position, TaskCheckpoints, agree
from crdist.train.engine import make_accelerator, param_groups, reset_optimizer_state, set_learning_rates
from crdist.train.policy import CheckpointPolicy, StopWatcher
from crdist.train.schedule import lr_at

log = logging.getLogger("crdist.train")


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs to train one method on one task (picklable)."""

    study: object  # crdist.study.StudyConfig
    method: str
    task: int
    num_tasks: int
    shards: str  # prepared stream directory (with manifest.json)
    init_weights: str  # c_{task-1}
    output: str  # where c_task is written
    checkpoints: str  # this job's mid-task checkpoint directory
    log_dir: str

    @property
    def label(self) -> str:
        return f"{self.method}/task-{self.task}"


@dataclass
class TaskResult:
    world: int
    engine: str  # Accelerate's distributed type, e.g. "DEEPSPEED"
    zero_stage: int
    steps: int
    first_loss: float
    final_loss: float
    seconds: float  # training time of this attempt (after any resume)
    samples_per_second: float
    resumed_from: int | None  # the checkpoint step this attempt started from
    stopped: bool  # stopped early on request (checkpointed, weights not written)


Reporter = Callable[[dict], None]


def train_task(job: TrainJob, report: Reporter = lambda event: None, stop_flag=None) -> TaskResult:
    """Train ``job`` on this rank, resuming from its latest checkpoint if there is one.

    Rank 0 calls ``report`` with progress events. ``stop_flag`` is the driver's stop request (a
    Ray actor); when it is raised, every rank checkpoints at the same step and returns.
    """
    world, rank = _world_and_rank()
    log_dir = Path(job.log_dir)
    handler = _log_to_file(log_dir / f"{job.method}-task{job.task}-rank{rank}.log")
    # Who is training this rank right now: what an operator (or a failure test) kills.
    write_text(log_dir / f"{job.method}-task{job.task}-rank{rank}.pid", str(os.getpid()))
    stop = StopWatcher(stop_flag) if stop_flag is not None and rank == 0 else None
    lock = JobLock(Path(job.checkpoints)) if rank == 0 else None
    try:
        log.info("%s: rank %d of %d, pid %d", job.label, rank, world, os.getpid())
        accelerator = make_accelerator(job.study.train, world)
        if agree(Path(job.output).is_file()):  # a restart after the job had already finished
            log.info("%s: already finished, weights in %s", job.label, job.output)
            return _finished(job)
        if lock is not None:
            lock.acquire()  # a dying attempt's rank 0 may still be working in the checkpoint directory
        run = _setup(job, accelerator, world, rank)
        policy = CheckpointPolicy(job.study.checkpoint, stop)
        result = _fit(run, job, report, policy)
        if not result.stopped:
            _save(run, job, result)
        return result
    except Exception:
        log.exception("%s failed on rank %d", job.label, rank)
        raise
    finally:
        if stop is not None:
            stop.close()
        if lock is not None:
            lock.release()
        _stop_logging_to(handler)


def _finished(job: TrainJob) -> TaskResult:
    summary = json.loads(Path(job.output).with_suffix(".train.json").read_text())
    summary.pop("job", None)
    return TaskResult(**summary)


@dataclass
class _Run:
    accelerator: object
    model: object  # the DeepSpeed engine around a Classifier
    optimizer: object
    method: Method
    stream: RankStream
    steps_per_epoch: list[int]
    total_steps: int
    phases: list[Phase]
    world: int
    rank: int
    checkpoints: TaskCheckpoints
    start: Position  # where this attempt begins: step 0, or the latest checkpoint


def _setup(job: TrainJob, accelerator, world: int, rank: int) -> _Run:
    cfg = job.study
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(derive_seed(cfg.seed, "train", job.method, job.task, rank))

    manifest = Manifest.load(job.shards)
    model = build_classifier(cfg.model, manifest.in_channels, manifest.num_classes, cfg.seed)
    load_into(model, job.init_weights)
    method = build_method(
        job.method, TaskContext(manifest.task(job.task), manifest.num_classes, cfg.model.head, cfg.train.lr), cfg
    )
    spec = StreamSpec(
        task=job.task,
        split="train",
        rank=rank,
        world=world,
        batch_size=cfg.train.batch_size,
        loader_workers=cfg.train.loader_workers,
        shuffle_buffer=cfg.train.shuffle_buffer,
        seed=cfg.seed,
    )
    stream = RankStream(manifest, spec, make_decoder(manifest, cfg.model), cfg.data.stream_url)
    steps_per_epoch = [stream.steps_in_epoch(e) for e in range(cfg.train.epochs)]
    total = min(sum(steps_per_epoch), cfg.train.max_steps or sum(steps_per_epoch))
    phases = [p for p in method.phases(total) if p.steps > 0]
    _check_phase_order(job.method, phases)
    log.info("%s: %d steps over %d epoch(s), phases %s, world %d", job.label, total, len(steps_per_epoch), phases, world)

    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoints = TaskCheckpoints(job.checkpoints, keep=cfg.checkpoint.keep)
    start = checkpoints.load(model, rank, world) or Position(step=0, epoch=0, batch_in_epoch=0)
    if start.step:
        log.info("%s: resuming from the checkpoint at step %d (epoch %d, batch %d)", job.label, start.step,
                 start.epoch, start.batch_in_epoch)
    return _Run(accelerator, model, optimizer, method, stream, steps_per_epoch, total, phases, world, rank,
                checkpoints, start)


def _fit(run: _Run, job: TrainJob, report: Reporter, policy: CheckpointPolicy) -> TaskResult:
    cfg = job.study.train
    accelerator, model, optimizer = run.accelerator, run.model, run.optimizer
    schedule = [(phase, i) for phase in run.phases for i in range(phase.steps)]
    losses: list[float] = list(run.start.losses)
    step, stopped = run.start.step, False
    if step:
        _enter_phase(model, optimizer, *schedule[step], resumed=True)
    # Every attempt announces where it starts: 0, or the checkpoint it resumed from.
    _report(accelerator, report, {"kind": "start", "job": job.label, "method": job.method, "task": job.task,
                                  "tasks": job.num_tasks, "step": step, "steps": run.total_steps})
    if policy.stop_requested(accelerator):  # asked to stop while starting up: nothing new to save
        stopped = True
    started = time.perf_counter()
    window = _ThroughputWindow(started)
    for epoch in range(run.start.epoch, len(run.steps_per_epoch) if not stopped else 0):
        # Resuming mid-epoch replays the epoch's deterministic stream up to the saved position.
        skip = run.start.batch_in_epoch if epoch == run.start.epoch else 0
        for batch_in_epoch, (images, labels) in enumerate(run.stream.batches(epoch), start=1):
            if batch_in_epoch <= skip:
                continue
            if step >= run.total_steps or stopped:
                break
            phase, step_in_phase = schedule[step]
            if step_in_phase == 0:
                _enter_phase(model, optimizer, phase, step_in_phase, resumed=False)
            lr = lr_at(step_in_phase, phase.steps, phase.lr, cfg.warmup_fraction, cfg.schedule)
            # Before backward: with DeepSpeed, accelerator.backward also runs the optimizer step
            # (optimizer.step() and zero_grad() below are then no-ops kept for other engines).
            set_learning_rates(optimizer, backbone_lr=lr if phase.train_backbone else 0.0, head_lr=lr)
            loss = run.method.loss(model, to_device(images, accelerator.device), labels.to(accelerator.device), phase)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            window.add(len(labels) * run.world)
            if step % cfg.log_every == 0 or step in (1, run.total_steps):
                # The mean over ranks is a collective: every rank reaches this line at the same steps.
                losses.append(accelerator.reduce(loss.detach().float(), reduction="mean").item())
                _report(accelerator, report, {
                    "kind": "train",
                    "job": job.label,
                    "method": job.method,
                    "task": job.task,
                    "tasks": job.num_tasks,
                    "phase": phase.name,
                    "step": step,
                    "steps": run.total_steps,
                    "epoch": epoch + 1,
                    "loss": losses[-1],
                    "lr": lr,
                    "samples_per_s": window.rate_and_restart(),
                })
            save, stopped = policy.decide(step, run.total_steps, accelerator)
            if save:
                position = Position.capture(step, *_next_batch(run, epoch, batch_in_epoch), losses)
                saved = run.checkpoints.save(model, position, run.rank, run.world, accelerator.wait_for_everyone)
                policy.saved()
                log.info("%s: checkpoint %s", job.label, saved)
                _report(accelerator, report, {"kind": "checkpoint", "job": job.label, "method": job.method,
                                              "task": job.task, "tasks": job.num_tasks, "step": step,
                                              "stopping": stopped})
        if step >= run.total_steps or stopped:
            break
    seconds = time.perf_counter() - started
    trained = step - run.start.step
    return TaskResult(
        world=run.world,
        engine=str(accelerator.distributed_type.value),
        zero_stage=cfg.zero_stage,
        steps=step,
        first_loss=losses[0] if losses else float("nan"),
        final_loss=losses[-1] if losses else float("nan"),
        seconds=seconds,
        samples_per_second=trained * cfg.batch_size * run.world / max(seconds, 1e-9),
        resumed_from=run.start.step or None,
        stopped=stopped,
    )


def _next_batch(run: _Run, epoch: int, batch_in_epoch: int) -> tuple[int, int]:
    """(epoch, batches consumed) of the position just after this batch."""
    if batch_in_epoch >= run.steps_per_epoch[epoch]:
        return epoch + 1, 0
    return epoch, batch_in_epoch


def _report(accelerator, report: Reporter, event: dict) -> None:
    event["time"] = time.time()  # wall clock where it happened, for failure timings
    log.info("%s", event)
    if accelerator.is_main_process:
        report(event)


def _save(run: _Run, job: TrainJob, result: TaskResult) -> None:
    """Consolidated fp32 weights of c_task, written by rank 0; the summary first, the weights last
    (their presence means the job is done), then the task's checkpoints are dropped."""
    # Under ZeRO-3 gathering the full weights is a collective: every rank takes part.
    state = run.accelerator.get_state_dict(run.model)
    if run.accelerator.is_main_process:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        output = Path(job.output)
        write_json(output.with_suffix(".train.json"), {"job": job.label, **asdict(result)})
        save_weights(state, output, metadata={"method": job.method, "task": str(job.task)})
        run.checkpoints.clear()
    run.accelerator.wait_for_everyone()
    log.info("%s done: %s", job.label, result)


class _ThroughputWindow:
    def __init__(self, now: float):
        self.start, self.samples = now, 0

    def add(self, samples: int) -> None:
        self.samples += samples

    def rate_and_restart(self) -> float:
        now = time.perf_counter()
        rate = self.samples / max(now - self.start, 1e-9)
        self.start, self.samples = now, 0
        return rate


def _check_phase_order(method: str, phases: list[Phase]) -> None:
    # Under ZeRO-3 a parameter that gets no gradient keeps the last one it had, so a frozen-backbone
    # phase after one that trained the backbone would feed stale gradients to Adam and to clipping.
    trained = False
    for phase in phases:
        if trained and not phase.train_backbone:
            raise ValueError(f"method {method}: phase {phase.name!r} freezes the backbone after a phase that trained it")
        trained = trained or phase.train_backbone


def _enter_phase(model, optimizer, phase: Phase, step_in_phase: int, resumed: bool) -> None:
    """Set up ``phase``: at its first step a fresh optimizer state; on resume only the train/eval
    modes, since the checkpoint holds the optimizer state."""
    if step_in_phase == 0 and not resumed:
        reset_optimizer_state(optimizer)
    model.train()
    if not phase.train_backbone:
        getattr(model, "module", model).backbone.eval()  # frozen features: BatchNorm statistics too


def _world_and_rank() -> tuple[int, int]:
    """From the process group when the launcher made one (Ray Train), else from the environment
    that Accelerate will use to make it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


_LOGGERS = ("crdist", "DeepSpeed")


def _log_to_file(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return handler


def _stop_logging_to(handler: logging.Handler) -> None:
    for name in _LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()
