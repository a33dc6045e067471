"""One worker's continued pretraining: a method's tasks one after another in the same process
(``train_tasks``), each task by a ``Trainer`` (set up → fit → save consolidated weights).

Runs in every rank of a job (a Ray Train worker, or any process group launched with the usual
RANK / WORLD_SIZE / MASTER_ADDR environment). All ranks run exactly the same number of steps.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Callable

import torch

from crdist.atomic import room_for, write_text
from crdist.integrity import write_sealed_json
from crdist.data.manifest import Manifest
from crdist.data.device_feed import device_feed
from crdist.data.samples import make_decoder
from crdist.data.stream import RankStream, StreamSpec
from crdist.memory import current_memory_bytes, peak_memory_bytes, reset_peak_memory, return_large_frees_to_the_system
from crdist.methods.base import MethodContext, Phase, build_method, method_class, trainable
from crdist.models import activation_checkpointing
from crdist.models.classifier import build_classifier
from crdist.models.weights import load_into, save_weights
from crdist.seeding import derive_seed
from crdist.train.checkpoint import JobLock, Position, TaskCheckpoints, agree, load_method_state, save_method_state
from crdist.train.engine import (
    make_accelerator,
    make_optimizer,
    release_engine,
    reset_optimizer_state,
    set_learning_rates,
)
from crdist.train.job import TaskResult, TrainJob, summary_path
from crdist.train.policy import CheckpointPolicy, PreemptionNotice, StopWatcher
from crdist.train.schedule import lr_at
from crdist.train.usage import mfu, training_flops_per_sample

log = logging.getLogger("crdist.train")


Reporter = Callable[[dict], None]


def train_tasks(jobs: list[TrainJob], report: Reporter = lambda event: None, stop_flag=None,
                preemption_info: Callable[[], object] | None = None) -> list[TaskResult]:
    """Train a chain of tasks in order on this rank (a method's, or several methods' one after
    another), each as ``train_task`` would in a fresh process
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
    results = [TaskResult.read(job.output) for job, finished in zip(jobs, done) if finished]
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
            return TaskResult.read(job.output)
        if lock is not None:
            lock.acquire()  # a dying attempt's rank 0 may still be working in the checkpoint directory
        trainer = Trainer(job, accelerator, world, rank)
        poll = job.checkpoint.preemption_poll_seconds
        notice = PreemptionNotice(preemption_info, poll) if preemption_info is not None and poll > 0 else None
        result = trainer.fit(report, CheckpointPolicy(job.checkpoint, stop, notice))
        starts = accelerator.gather(torch.tensor([start_memory], dtype=torch.int64, device=accelerator.device))
        result.start_memory_bytes = [int(m) for m in starts.tolist()]
        if not result.stopped:
            trainer.save(result)
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


class Trainer:
    """One rank's training of one task: built from the job (model, stream, method, engine, and the
    checkpoint to resume from), then ``fit`` and, unless stopped, ``save``."""

    def __init__(self, job: TrainJob, accelerator, world: int, rank: int):
        # In this order, which fixes what every random draw is: the seed, the model, the stream,
        # the method, the engine, then the checkpoint or the state carried from the task before.
        self.job, self.accelerator, self.world, self.rank = job, accelerator, world, rank
        train = job.train
        torch.set_num_threads(max(1, int(train.cpus_per_worker)))
        torch.manual_seed(derive_seed(job.seed, "train", job.method, job.task, rank))
        self.accumulation = train.accumulation(world)
        self.manifest = Manifest.load(job.shards)
        model = self._build_model()
        self.stream = self._build_stream()
        self.method = self._build_method()
        # An epoch's last micro-batches that cannot fill a whole step are left out, as a partial last
        # batch is: the same global batches on any number of workers.
        self.steps_per_epoch = [self.stream.steps_in_epoch(e) // self.accumulation for e in range(train.epochs)]
        available = min(sum(self.steps_per_epoch), train.max_steps or sum(self.steps_per_epoch))
        self.phases = [p for p in self.method.phases(available) if p.steps > 0]
        self.total_steps = sum(p.steps for p in self.phases)  # a method may train for fewer steps (frozen: none)
        _check_phase_order(job.method, self.phases)
        log.info("%s: %d steps over %d epoch(s), phases %s, world %d", job.label, self.total_steps,
                 len(self.steps_per_epoch), self.phases, world)
        self.model, self.optimizer = accelerator.prepare(model, make_optimizer(model, train))
        self.checkpoints = TaskCheckpoints(job.checkpoints, keep=job.checkpoint.keep)
        self.start = self._restore()

    def _build_model(self):
        job = self.job
        model = build_classifier(job.model, self.manifest.in_channels, self.manifest.num_classes, job.seed,
                                 image_size=self.manifest.image_size)
        load_into(model, job.init_weights, sealed=True)  # c_{i-1}: crdist's own, checked against its digest
        if job.train.activation_checkpointing:
            blocks = activation_checkpointing.enable(model.backbone, job.model.backbone)
            log.info("%s: activation checkpointing in %d blocks", job.label, blocks)
        return model

    def _build_stream(self) -> RankStream:
        job, train = self.job, self.job.train
        spec = StreamSpec(
            task=job.task,
            split="train",
            rank=self.rank,
            world=self.world,
            batch_size=train.batch_size,
            loader_workers=train.loader_workers,
            shuffle_buffer=train.shuffle_buffer,
            seed=job.seed,
            also=tuple(t for t in method_class(job.method).tasks_to_stream(job.task) if t != job.task),
            order=train.data_order,
            augment=job.augment,
            accumulation=self.accumulation,
            cache_bytes=int(train.decoded_cache_mb * 2**20),
        )
        return RankStream(self.manifest, spec, make_decoder(self.manifest, job.model), job.stream_url)

    def _build_method(self):
        job, manifest, device = self.job, self.manifest, self.accelerator.device
        context = MethodContext(
            method=job.method, task=manifest.task(job.task), num_tasks=job.num_tasks, num_classes=manifest.num_classes,
            modality=manifest.modality, head=job.model.head, lr=job.train.lr, seed=job.seed, rank=self.rank,
            world=self.world, zero_stage=job.train.zero_stage, device=device,
            batches=lambda epoch: device_feed(self.stream.batches(epoch), device),
            task_classes=tuple(tuple(t.classes) for t in manifest.tasks if t.index <= job.task),
        )
        return build_method(job.method, context, job.method_config)

    def _restore(self) -> Position:
        """Where this attempt begins: the latest checkpoint of the task (with the method's state
        in it), or step 0 with the state the method carried out of the task before."""
        job = self.job
        start = self.checkpoints.load(self.model, self.rank, self.world, self.accumulation)
        if start is not None:
            log.info("%s: resuming from the checkpoint at step %d (epoch %d, batch %d)", job.label, start.step,
                     start.epoch, start.batch_in_epoch)
            self.method.load_state_dict(self.checkpoints.method_state(self.rank, self._resharder()))
            return start
        written_by = TaskResult.read(job.init_weights).state_ranks if job.init_state is not None else 0
        carried = load_method_state(job.init_state, self.rank, self.world, self._resharder(), written_by)
        if carried is not None:
            self.method.load_state_dict(carried)
        self.method.start_task(self.model)
        return Position(step=0, epoch=0, batch_in_epoch=0)

    def fit(self, report: Reporter, policy: CheckpointPolicy) -> TaskResult:
        job, cfg = self.job, self.job.train
        accelerator, model, optimizer = self.accelerator, self.model, self.optimizer
        schedule = [(phase, i) for phase in self.phases for i in range(phase.steps)]
        losses: list[float] = list(self.start.losses)
        step, stopped = self.start.step, False
        if step:
            _enter_phase(model, optimizer, *schedule[step], resumed=True)
        # A damaged checkpoint passed over on the way (set aside): the driver says so and journals it.
        for damaged in self.checkpoints.damaged:
            _report(accelerator, report, {"kind": "damaged", "job": job.label, "method": job.method, "task": job.task,
                                          "tasks": job.num_tasks, **damaged,
                                          "action": f"resumed from step {step}" if step else
                                          f"no sound checkpoint left: task {job.task} trained again from its start"})
        # Every attempt announces where it starts: 0, or the checkpoint it resumed from.
        _report(accelerator, report, {"kind": "start", "job": job.label, "method": job.method, "task": job.task,
                                      "tasks": job.num_tasks, "step": step, "steps": self.total_steps})
        if policy.stop_requested(accelerator):  # asked to stop while starting up: nothing new to save
            stopped = True
        started = time.perf_counter()
        window = _ThroughputWindow(started)
        accumulation = self.accumulation
        step_losses: list[torch.Tensor] = []  # this step's micro-batch losses
        for epoch in range(self.start.epoch, len(self.steps_per_epoch) if not stopped else 0):
            # Resuming mid-epoch replays the epoch's deterministic stream up to the saved position.
            skip = self.start.batch_in_epoch if epoch == self.start.epoch else 0
            batches_used = self.steps_per_epoch[epoch] * accumulation
            # The batches a resume replays are read (the order depends on them) but never copied to the device.
            batches = device_feed(islice(self.stream.batches(epoch), skip, None), accelerator.device)
            for batch_in_epoch, (images, labels) in enumerate(batches, start=skip + 1):
                if step >= self.total_steps or stopped or batch_in_epoch > batches_used:
                    break
                phase, step_in_phase = schedule[step]
                first_micro_batch = (batch_in_epoch - 1) % accumulation == 0
                if step_in_phase == 0 and first_micro_batch:
                    _enter_phase(model, optimizer, phase, step_in_phase, resumed=False)
                lr = lr_at(step_in_phase, phase.steps, phase.lr, cfg.warmup_fraction, cfg.schedule)
                # Before backward: with DeepSpeed, the backward of a step's last micro-batch also runs
                # the optimizer step.
                set_learning_rates(optimizer, backbone_lr=lr if phase.train_backbone else 0.0, head_lr=lr)
                loss = self.method.loss(model, images, labels, phase)
                boundary = batch_in_epoch % accumulation == 0
                self._backward_and_step(loss, lr if phase.train_backbone else 0.0, boundary)
                self.method.after_step()
                window.add(len(labels) * self.world)
                step_losses.append(loss.detach().float())
                if not boundary:
                    continue
                step += 1
                step_loss, step_losses = torch.stack(step_losses).mean(), []
                if step % cfg.log_every == 0 or step in (1, self.total_steps):
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
                        "steps": self.total_steps,
                        "epoch": epoch + 1,
                        "loss": losses[-1],
                        "lr": lr,
                        "samples_per_s": window.rate_and_restart(),
                    })
                save, stopped = policy.decide(step, self.total_steps, accelerator)
                if save:
                    position = Position.capture(step, *self._next_batch(epoch, batch_in_epoch), losses)
                    saved = self.checkpoints.save(model, position, self.rank, self.world, accelerator.wait_for_everyone,
                                                 method_state=self.method.state_dict(), accumulation=accumulation)
                    policy.saved()
                    log.info("%s: checkpoint %s", job.label, saved)
                    _report(accelerator, report, {"kind": "checkpoint", "job": job.label, "method": job.method,
                                                  "task": job.task, "tasks": job.num_tasks, "step": step,
                                                  "stopping": stopped, "preempted_nodes": list(policy.preempted_nodes)})
            if step >= self.total_steps or stopped:
                break
        policy.finish()
        seconds = time.perf_counter() - started
        trained = step - self.start.step
        if not stopped:
            _buffers_from_rank0(model)
            self.method.end_task(model)  # every rank: it may all-reduce (a Fisher, an importance)
        state_bytes = self.method.state_bytes()
        log.info("%s: the method holds %.1f KiB on rank %d (buffers, importances)", job.label, state_bytes / 1024, self.rank)
        per_worker = trained * cfg.batch_size * accumulation / max(seconds, 1e-9)
        device = accelerator.device
        # Every rank's peak, gathered (a collective: every rank reaches this line).
        peaks = accelerator.gather(torch.tensor([peak_memory_bytes(device)], dtype=torch.int64, device=device))
        flops = training_flops_per_sample(job.model, self.manifest)
        return TaskResult(
            world=self.world,
            engine=str(accelerator.distributed_type.value),
            zero_stage=cfg.zero_stage,
            steps=step,
            first_loss=losses[0] if losses else float("nan"),
            final_loss=losses[-1] if losses else float("nan"),
            seconds=seconds,
            samples_per_second=per_worker * self.world,
            resumed_from=self.start.step or None,
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

    def _backward_and_step(self, loss, lr: float, boundary: bool = True) -> None:
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
        engine = self.model
        if self.accumulation == 1 and not self.method.hooks_gradients:
            self.accelerator.backward(loss)  # with DeepSpeed: backward and step
            self.optimizer.step()  # no-ops under DeepSpeed, kept for other engines
            self.optimizer.zero_grad()
            return
        engine.set_gradient_accumulation_boundary(boundary)
        engine.backward(loss)
        if not boundary:
            return
        if self.method.hooks_gradients:
            from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

            params = [p for _, p in trainable(engine)]
            grads = [safe_get_full_grad(p) for p in params]
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
            for p, before, after in zip(params, grads, self.method.on_gradients(engine, grads, lr)):
                if after is not before:
                    safe_set_full_grad(p, after)
        engine.step()

    def _next_batch(self, epoch: int, batch_in_epoch: int) -> tuple[int, int]:
        """(epoch, batches consumed) of the position just after this batch."""
        if batch_in_epoch >= self.steps_per_epoch[epoch] * self.accumulation:
            return epoch + 1, 0
        return epoch, batch_in_epoch

    def _resharder(self):
        """``states → states``: the method's own re-sharding of its per-rank state for this world."""
        return lambda states: method_class(self.job.method).reshard_state(states, self.world, self.job.seed)

    def save(self, result: TaskResult) -> None:
        """Consolidated fp32 weights of c_task, written by rank 0; the summary first, the weights last
        (their presence means the job is done), then the task's checkpoints are dropped."""
        # The method's state first, every rank its own, before the weights that mean "done".
        job = self.job
        method_state = self.method.state_dict()
        if job.output_state is not None and method_state:
            with room_for(Path(job.output_state).parent, f"the method state of {job.label}",
                          self.method.state_bytes()):
                save_method_state(job.output_state, self.rank, method_state)
        result.state_ranks = self.world if job.output_state is not None and method_state else 0
        self.accelerator.wait_for_everyone()
        # Under ZeRO-3 gathering the full weights is a collective: every rank takes part.
        state = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            output = Path(job.output)
            needed = sum(v.numel() * v.element_size() for v in state.values())
            with room_for(output.parent, f"{output.name}, the weights of {job.label}", needed):
                write_sealed_json(summary_path(output), {"job": job.label, **asdict(result)})
                save_weights(state, output, metadata={"method": job.method, "task": str(job.task)})
            self.checkpoints.clear()
        self.accelerator.wait_for_everyone()
        log.info("%s done: %s", job.label, result)


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


def _report(accelerator, report: Reporter, event: dict) -> None:
    event["time"] = time.time()  # wall clock where it happened, for failure timings
    log.info("%s", event)
    if accelerator.is_main_process:
        report(event)


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
    try:
        handler.close()
    except OSError:
        # The log's last lines found no room (a full disk): closing must not replace the task's own
        # error (a DiskFull that says what to do) with the log file's.
        pass
