"""One worker's continued pretraining on one task: setup → fit → save consolidated weights; and a
method's tasks one after another in the same worker processes.

Runs in every rank of a job (a Ray Train worker, or any process group launched with the usual
RANK / WORLD_SIZE / MASTER_ADDR environment). All ranks run exactly the same number of steps.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from crdist.atomic import atomic_path, write_json, write_text
from crdist.data.manifest import Manifest
from crdist.data.samples import make_decoder, to_device
from crdist.data.stream import RankStream, StreamSpec
from crdist.methods.base import Method, MethodContext, Phase, build_method, method_class, trainable
from crdist.models import activation_checkpointing
from crdist.models.classifier import build_classifier
from crdist.models.weights import load_into, save_weights
from crdist.seeding import derive_seed
from crdist.models.config import ModelConfig
from crdist.train.checkpoint import CheckpointConfig, CheckpointError, JobLock, Position, TaskCheckpoints, agree
from crdist.train.config import TrainConfig
from crdist.train.engine import (make_accelerator, make_optimizer, release_engine, reset_optimizer_state,
                                 set_learning_rates)
from crdist.train.policy import CheckpointPolicy, PreemptionNotice, StopWatcher
from crdist.train.schedule import lr_at
from crdist.train.usage import (current_memory_bytes, mfu, peak_memory_bytes, reset_peak_memory,
                                return_large_frees_to_the_system, training_flops_per_sample)

log = logging.getLogger("crdist.train")


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs to train one method on one task (picklable): the config sections
    it uses, and where its inputs and outputs live."""

    train: TrainConfig
    model: ModelConfig
    checkpoint: CheckpointConfig
    seed: int
    stream_url: str | None  # data.stream_url
    method: str
    method_config: object  # the method's own config section (None for a method without options)
    task: int
    num_tasks: int
    shards: str  # prepared stream directory (with manifest.json)
    init_weights: str  # c_{task-1}
    output: str  # where c_task is written
    checkpoints: str  # this job's mid-task checkpoint directory
    log_dir: str
    init_state: str | None = None  # the method's state after task-1, per rank (a directory)
    output_state: str | None = None  # where this task's method state is written, before c_task
    augment: str = "none"  # data.augment

    @classmethod
    def from_study(cls, study, method: str, **job) -> "TrainJob":
        return cls(train=study.train, model=study.model, checkpoint=study.checkpoint, seed=study.seed,
                   stream_url=study.data.stream_url, method=method, method_config=study.method_config(method),
                   augment=study.data.augment, **job)

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
    method_state_bytes: int = 0  # what the method holds on rank 0 (buffers, importances)
    samples_per_second_per_worker: float = 0.0
    # Per rank: resident set high-water mark on CPU, CUDA max allocated on GPU (crdist/train/usage.py).
    peak_memory_bytes: list[int] = field(default_factory=list)
    memory_measure: str = ""  # "cpu-rss" or "cuda-max-allocated"
    # Per rank, when the job started: the process after its imports (what the peak grew from).
    start_memory_bytes: list[int] = field(default_factory=list)
    flops_per_sample: float | None = None  # training FLOPs (3 × forward) per sample; null for text
    parameters: int = 0  # of the whole classifier (backbone and head)
    mfu: float | None = None  # on GPU: model FLOP utilisation against the GPU's bf16 peak


Reporter = Callable[[dict], None]


def train_tasks(jobs: list[TrainJob], report: Reporter = lambda event: None, stop_flag=None,
                preemption_info: Callable[[], object] | None = None) -> list[TaskResult]:
    """Train a method's tasks in order on this rank, each as ``train_task`` would in a fresh process
    (its own seed, model, stream, engine and checkpoints; the same weights bit for bit), and stop
    after a task that stopped on request. Tasks whose weights exist are passed over: a restarted
    worker group resumes at the task it was training.

    What the processes keep from task to task is what a fresh one would spend seconds rebuilding:
    the imports, the process group, and the Accelerator (Accelerate takes a DeepSpeed plugin only
    in a process's first one). Each task's engine is freed after it (``release_engine``).
    """
    world, rank = _world_and_rank()
    if not jobs[0].train.use_gpu:
        return_large_frees_to_the_system()
    accelerator = make_accelerator(jobs[0].train, world)
    # What exists now (the libraries, Ray, the process group) lives as long as the process: frozen,
    # it is left out of the collections that free each task's engine (0.5 s each otherwise).
    gc.collect()
    gc.freeze()
    done = agree([Path(job.output).is_file() for job in jobs])  # rank 0's view, on every rank
    results = [_finished(job) for job, finished in zip(jobs, done) if finished]
    for job in [job for job, finished in zip(jobs, done) if not finished]:
        try:
            result = train_task(job, report, stop_flag, preemption_info, accelerator=accelerator)
        finally:
            if not release_engine(accelerator):
                log.warning("%s: its DeepSpeed engine is still referenced after the task on rank %d; its memory "
                            "stays taken while the next tasks train", job.label, rank)
        results.append(result)
        if result.stopped:
            break
    return results


def train_task(job: TrainJob, report: Reporter = lambda event: None, stop_flag=None,
               preemption_info: Callable[[], object] | None = None, accelerator=None) -> TaskResult:
    """Train ``job`` on this rank, resuming from its latest checkpoint if there is one.

    Rank 0 calls ``report`` with progress events. ``stop_flag`` is the driver's stop request (a
    Ray actor); when it is raised, every rank checkpoints at the same step and returns.
    ``preemption_info`` is ``ray.train.get_preemption_info`` under Ray Train: when it names a
    node of this job, every rank checkpoints at the same step and trains on. ``accelerator``: the
    process's Accelerator when it trained a task before (``train_tasks``); made here otherwise.
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
        if not job.train.use_gpu:
            return_large_frees_to_the_system()
        accelerator = accelerator or make_accelerator(job.train, world)
        start_memory = current_memory_bytes(accelerator.device)
        reset_peak_memory(accelerator.device)
        if agree(Path(job.output).is_file()):  # a restart after the job had already finished
            log.info("%s: already finished, weights in %s", job.label, job.output)
            return _finished(job)
        if lock is not None:
            lock.acquire()  # a dying attempt's rank 0 may still be working in the checkpoint directory
        run = _setup(job, accelerator, world, rank)
        poll = job.checkpoint.preemption_poll_seconds
        notice = PreemptionNotice(preemption_info, poll) if preemption_info is not None and poll > 0 else None
        policy = CheckpointPolicy(job.checkpoint, stop, notice)
        result = _fit(run, job, report, policy)
        starts = accelerator.gather(torch.tensor([start_memory], dtype=torch.int64, device=accelerator.device))
        result.start_memory_bytes = [int(m) for m in starts.tolist()]
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
    steps_per_epoch: list[int]  # optimizer steps; each takes ``accumulation`` batches of the stream
    total_steps: int
    phases: list[Phase]
    world: int
    rank: int
    checkpoints: TaskCheckpoints
    start: Position  # where this attempt begins: step 0, or the latest checkpoint
    manifest: Manifest
    accumulation: int = 1  # micro-batches per optimizer step on this rank (train.global_batch)


def _setup(job: TrainJob, accelerator, world: int, rank: int) -> _Run:
    train = job.train
    torch.set_num_threads(max(1, int(train.cpus_per_worker)))
    torch.manual_seed(derive_seed(job.seed, "train", job.method, job.task, rank))

    accumulation = train.accumulation(world)
    manifest = Manifest.load(job.shards)
    model = build_classifier(job.model, manifest.in_channels, manifest.num_classes, job.seed,
                             image_size=manifest.image_size)
    load_into(model, job.init_weights)
    if train.activation_checkpointing:
        blocks = activation_checkpointing.enable(model.backbone, job.model.backbone)
        log.info("%s: activation checkpointing in %d blocks", job.label, blocks)
    spec = StreamSpec(
        task=job.task,
        split="train",
        rank=rank,
        world=world,
        batch_size=train.batch_size,
        loader_workers=train.loader_workers,
        shuffle_buffer=train.shuffle_buffer,
        seed=job.seed,
        also=tuple(t for t in method_class(job.method).tasks_to_stream(job.task) if t != job.task),
        order=train.data_order,
        augment=job.augment,
        accumulation=accumulation,
        cache_bytes=int(train.decoded_cache_mb * 2**20),
    )
    stream = RankStream(manifest, spec, make_decoder(manifest, job.model), job.stream_url)
    context = MethodContext(
        method=job.method, task=manifest.task(job.task), num_tasks=job.num_tasks, num_classes=manifest.num_classes,
        modality=manifest.modality, head=job.model.head, lr=train.lr, seed=job.seed, rank=rank, world=world,
        zero_stage=train.zero_stage, device=accelerator.device,
        batches=lambda epoch: _on_device(stream.batches(epoch), accelerator.device),
        classes_so_far=tuple(c for t in manifest.tasks if t.index <= job.task for c in t.classes),
    )
    method = build_method(job.method, context, job.method_config)
    # An epoch's last micro-batches that cannot fill a whole step are left out, as a partial last
    # batch is: the same global batches on any number of workers.
    steps_per_epoch = [stream.steps_in_epoch(e) // accumulation for e in range(train.epochs)]
    available = min(sum(steps_per_epoch), train.max_steps or sum(steps_per_epoch))
    phases = [p for p in method.phases(available) if p.steps > 0]
    total = sum(p.steps for p in phases)  # a method may train for fewer steps (frozen: none)
    _check_phase_order(job.method, phases)
    log.info("%s: %d steps over %d epoch(s), phases %s, world %d", job.label, total, len(steps_per_epoch), phases, world)

    optimizer = make_optimizer(model, train)
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoints = TaskCheckpoints(job.checkpoints, keep=job.checkpoint.keep)
    start = checkpoints.load(model, rank, world, accumulation) or Position(step=0, epoch=0, batch_in_epoch=0)
    if start.step:
        log.info("%s: resuming from the checkpoint at step %d (epoch %d, batch %d)", job.label, start.step,
                 start.epoch, start.batch_in_epoch)
        method.load_state_dict(checkpoints.method_state(rank, _resharder(job, world)))
    else:
        carried = load_method_state(job.init_state, rank, world, _resharder(job, world))
        if carried is not None:
            method.load_state_dict(carried)
        method.start_task(model)
    return _Run(accelerator, model, optimizer, method, stream, steps_per_epoch, total, phases, world, rank,
                checkpoints, start, manifest, accumulation)


def _on_device(batches, device):
    for inputs, labels in batches:
        yield to_device(inputs, device), labels.to(device)


def _fit(run: _Run, job: TrainJob, report: Reporter, policy: CheckpointPolicy) -> TaskResult:
    cfg = job.train
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
    accumulation = run.accumulation
    step_losses: list[torch.Tensor] = []  # this step's micro-batch losses
    for epoch in range(run.start.epoch, len(run.steps_per_epoch) if not stopped else 0):
        # Resuming mid-epoch replays the epoch's deterministic stream up to the saved position.
        skip = run.start.batch_in_epoch if epoch == run.start.epoch else 0
        batches_used = run.steps_per_epoch[epoch] * accumulation
        for batch_in_epoch, (images, labels) in enumerate(run.stream.batches(epoch), start=1):
            if batch_in_epoch <= skip:
                continue
            if step >= run.total_steps or stopped or batch_in_epoch > batches_used:
                break
            phase, step_in_phase = schedule[step]
            first_micro_batch = (batch_in_epoch - 1) % accumulation == 0
            if step_in_phase == 0 and first_micro_batch:
                _enter_phase(model, optimizer, phase, step_in_phase, resumed=False)
            lr = lr_at(step_in_phase, phase.steps, phase.lr, cfg.warmup_fraction, cfg.schedule)
            # Before backward: with DeepSpeed, the backward of a step's last micro-batch also runs
            # the optimizer step.
            set_learning_rates(optimizer, backbone_lr=lr if phase.train_backbone else 0.0, head_lr=lr)
            loss = run.method.loss(model, to_device(images, accelerator.device), labels.to(accelerator.device), phase)
            boundary = batch_in_epoch % accumulation == 0
            _backward_and_step(run, loss, lr if phase.train_backbone else 0.0, boundary)
            run.method.after_step()
            window.add(len(labels) * run.world)
            step_losses.append(loss.detach().float())
            if not boundary:
                continue
            step += 1
            step_loss, step_losses = torch.stack(step_losses).mean(), []
            if step % cfg.log_every == 0 or step in (1, run.total_steps):
                # The mean over ranks is a collective: every rank reaches this line at the same steps.
                losses.append(accelerator.reduce(step_loss, reduction="mean").item())
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
                saved = run.checkpoints.save(model, position, run.rank, run.world, accelerator.wait_for_everyone,
                                             method_state=run.method.state_dict(), accumulation=accumulation)
                policy.saved()
                log.info("%s: checkpoint %s", job.label, saved)
                _report(accelerator, report, {"kind": "checkpoint", "job": job.label, "method": job.method,
                                              "task": job.task, "tasks": job.num_tasks, "step": step,
                                              "stopping": stopped, "preempted_nodes": list(policy.preempted_nodes)})
        if step >= run.total_steps or stopped:
            break
    policy.finish()
    seconds = time.perf_counter() - started
    trained = step - run.start.step
    if not stopped:
        _buffers_from_rank0(model)
        run.method.end_task(model)  # every rank: it may all-reduce (a Fisher, an importance)
    state_bytes = run.method.state_bytes()
    log.info("%s: the method holds %.1f KiB on rank %d (buffers, importances)", job.label, state_bytes / 1024, run.rank)
    per_worker = trained * cfg.batch_size * accumulation / max(seconds, 1e-9)
    device = accelerator.device
    # Every rank's peak, gathered (a collective: every rank reaches this line).
    peaks = accelerator.gather(torch.tensor([peak_memory_bytes(device)], dtype=torch.int64, device=device))
    flops = training_flops_per_sample(job.model, run.manifest)
    return TaskResult(
        world=run.world,
        engine=str(accelerator.distributed_type.value),
        zero_stage=cfg.zero_stage,
        steps=step,
        first_loss=losses[0] if losses else float("nan"),
        final_loss=losses[-1] if losses else float("nan"),
        seconds=seconds,
        samples_per_second=per_worker * run.world,
        resumed_from=run.start.step or None,
        stopped=stopped,
        method_state_bytes=state_bytes,
        samples_per_second_per_worker=per_worker,
        peak_memory_bytes=[int(p) for p in peaks.tolist()],
        memory_measure="cuda-max-allocated" if device.type == "cuda" else "cpu-rss",
        flops_per_sample=flops,
        # ZeRO-3 keeps a shard of each parameter here; ds_numel is its full size
        parameters=sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
        mfu=mfu(flops, per_worker, device),
    )


def _buffers_from_rank0(model) -> None:
    """Give every rank rank 0's BatchNorm statistics: the model that is saved as c_i.

    Each rank updates its running statistics from its own batches, and a checkpoint keeps rank 0's
    only, so after a resume the other ranks' statistics differ from an uninterrupted run's. Training
    never reads them (train mode uses batch statistics), but a method's task end may (EWC's Fisher
    runs in eval mode): it must see c_i on every rank, the same after a resume as without one.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for buffer in getattr(model, "module", model).buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def _backward_and_step(run: _Run, loss, lr: float, boundary: bool = True) -> None:
    """Backward of one micro-batch, and the optimizer step at the last micro-batch of a step
    (``boundary``), where DeepSpeed reduces the accumulated gradients across ranks.

    The engine is driven directly, not through ``accelerator.backward``: Accelerate marks every
    call a boundary unless its own ``accumulate`` context counts the micro-batches, and crdist
    counts them itself (its checkpoints and resumes are at step boundaries).

    For a method with a gradient hook, after the boundary's backward DeepSpeed holds the gradient
    averaged over ranks (partitioned under ZeRO-1/2); the method gets it whole
    (``safe_get_full_grad``, a collective per parameter), and what it returns goes back into the
    partitions (``safe_set_full_grad``) before the step clips and applies it.
    """
    engine = run.model
    if run.accumulation == 1 and not run.method.hooks_gradients:
        run.accelerator.backward(loss)  # with DeepSpeed: backward and step
        run.optimizer.step()  # no-ops under DeepSpeed, kept for other engines
        run.optimizer.zero_grad()
        return
    engine.set_gradient_accumulation_boundary(boundary)
    engine.backward(loss)
    if not boundary:
        return
    if run.method.hooks_gradients:
        from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

        params = [p for _, p in trainable(engine)]
        grads = [safe_get_full_grad(p) for p in params]
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        for p, before, after in zip(params, grads, run.method.on_gradients(engine, grads, lr)):
            if after is not before:
                safe_set_full_grad(p, after)
    engine.step()


def load_method_state(directory: str | None, rank: int, world: int, reshard=None) -> dict | None:
    """The state a method carried out of the previous task on this rank; None when it kept none.
    Written by another number of workers, every old rank's state is read and ``reshard(states)``
    gives the new ranks'."""
    if directory is None or not Path(directory).is_dir():
        return None
    written_by = len(list(Path(directory).glob("rank-*.pt")))
    if written_by == 0:
        return None
    paths = [Path(directory) / f"rank-{r}.pt" for r in range(written_by)]
    if not all(p.is_file() for p in paths):
        raise CheckpointError(f"{directory}: the method's state files are not rank-0 … rank-{written_by - 1}")
    if written_by == world:
        return torch.load(paths[rank], weights_only=True)
    if reshard is None:
        raise CheckpointError(f"{directory}: the method's state was written by {written_by} workers; continue with "
                              f"train.workers={written_by}")
    log.info("%s: the method's state of %d workers re-sharded for %d", directory, written_by, world)
    return reshard([torch.load(p, weights_only=True) for p in paths])[rank]


def _resharder(job: TrainJob, world: int):
    """``states → states``: the method's own re-sharding of its per-rank state for ``world`` ranks."""
    return lambda states: method_class(job.method).reshard_state(states, world, job.seed)


def _next_batch(run: _Run, epoch: int, batch_in_epoch: int) -> tuple[int, int]:
    """(epoch, batches consumed) of the position just after this batch."""
    if batch_in_epoch >= run.steps_per_epoch[epoch] * run.accumulation:
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
    # The method's state first, every rank its own, before the weights that mean "done".
    method_state = run.method.state_dict()
    if job.output_state is not None and method_state:
        with atomic_path(Path(job.output_state) / f"rank-{run.rank}.pt") as tmp:
            torch.save(method_state, tmp)
    run.accelerator.wait_for_everyone()
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
