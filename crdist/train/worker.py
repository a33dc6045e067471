"""One worker's continued pretraining on one task: setup → fit → save consolidated weights.

Runs in every rank of a job (a Ray Train worker, or any process group launched with the usual
RANK / WORLD_SIZE / MASTER_ADDR environment). All ranks run exactly the same number of steps.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from crdist.atomic import write_json
from crdist.data.manifest import Manifest
from crdist.data.stream import RankStream, StreamSpec
from crdist.methods.base import Phase, TaskContext, build_method
from crdist.models.classifier import build_classifier
from crdist.models.weights import load_into, save_weights
from crdist.train.engine import make_accelerator, param_groups, reset_optimizer_state, set_learning_rates
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
    seconds: float
    samples_per_second: float


Reporter = Callable[[dict], None]


def train_task(job: TrainJob, report: Reporter = lambda event: None) -> TaskResult:
    cfg = job.study
    world, rank = _world_and_rank()
    _log_to_file(Path(job.log_dir) / f"{job.method}-task{job.task}-rank{rank}.log")
    try:
        return _train(job, report, world, rank)
    except Exception:
        log.exception("%s failed on rank %d", job.label, rank)
        raise


def _train(job: TrainJob, report: Reporter, world: int, rank: int) -> TaskResult:
    cfg = job.study
    accelerator = make_accelerator(cfg.train, world)
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.seed * 1000 + job.task * 10 + rank)

    manifest = Manifest.load(job.shards)
    model = build_classifier(cfg.model.backbone, manifest.image.channels, manifest.num_classes, cfg.seed)
    load_into(model, job.init_weights)
    context = TaskContext(manifest.task(job.task), manifest.num_classes, cfg.model.head, cfg.train.lr)
    method = build_method(job.method, context, cfg)
    stream = RankStream(
        manifest,
        StreamSpec(
            task=job.task,
            split="train",
            rank=rank,
            world=world,
            batch_size=cfg.train.batch_size,
            loader_workers=cfg.train.loader_workers,
            shuffle_buffer=cfg.train.shuffle_buffer,
            seed=cfg.seed,
        ),
    )
    epochs = [stream.steps_in_epoch(e) for e in range(cfg.train.epochs)]
    total = min(sum(epochs), cfg.train.max_steps or sum(epochs))
    phases = [p for p in method.phases(total) if p.steps > 0]
    log.info("%s: %d steps over %d epoch(s), phases %s, world %d", job.label, total, len(epochs), phases, world)

    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
    model, optimizer = accelerator.prepare(model, optimizer)

    losses: list[float] = []
    started = time.perf_counter()
    window_start, window_samples = started, 0
    step = 0
    schedule = _phase_schedule(phases)
    for epoch in range(len(epochs)):
        if step >= total:
            break
        for images, labels in stream.batches(epoch):
            if step >= total:
                break
            phase, step_in_phase = schedule[step]
            if step_in_phase == 0:
                _start_phase(model, optimizer, phase, first=step == 0)
            lr = lr_at(step_in_phase, phase.steps, phase.lr, cfg.train.warmup_fraction, cfg.train.schedule)
            set_learning_rates(optimizer, backbone_lr=lr if phase.train_backbone else 0.0, head_lr=lr)
            images, labels = images.to(accelerator.device), labels.to(accelerator.device)
            loss = method.loss(model, images, labels, phase)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            window_samples += len(labels) * world
            if step % cfg.train.log_every == 0 or step == total or step == 1:
                # Mean over ranks; every rank reaches this line at the same steps.
                mean_loss = accelerator.reduce(loss.detach().float(), reduction="mean").item()
                losses.append(mean_loss)
                now = time.perf_counter()
                event = {
                    "kind": "train",
                    "job": job.label,
                    "method": job.method,
                    "task": job.task,
                    "tasks": job.num_tasks,
                    "phase": phase.name,
                    "step": step,
                    "steps": total,
                    "epoch": epoch + 1,
                    "loss": mean_loss,
                    "lr": lr,
                    "samples_per_s": window_samples / max(now - window_start, 1e-9),
                }
                window_start, window_samples = now, 0
                log.info("%s", event)
                if accelerator.is_main_process:
                    report(event)
    seconds = time.perf_counter() - started

    result = TaskResult(
        world=world,
        engine=str(accelerator.distributed_type.value),
        zero_stage=cfg.train.zero_stage,
        steps=step,
        first_loss=losses[0] if losses else float("nan"),
        final_loss=losses[-1] if losses else float("nan"),
        seconds=seconds,
        samples_per_second=step * cfg.train.batch_size * world / max(seconds, 1e-9),
    )
    # Under ZeRO-3 gathering the full weights is a collective: every rank takes part.
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        output = Path(job.output)
        write_json(output.with_suffix(".train.json"), {"job": job.label, **asdict(result)})
        save_weights(state, output, metadata={"method": job.method, "task": str(job.task)})
    accelerator.wait_for_everyone()
    log.info("%s done: %s", job.label, result)
    return result


def _phase_schedule(phases: list[Phase]) -> list[tuple[Phase, int]]:
    return [(phase, i) for phase in phases for i in range(phase.steps)]


def _start_phase(model, optimizer, phase: Phase, first: bool) -> None:
    if not first:
        reset_optimizer_state(optimizer)  # each phase starts like a fresh optimizer
    model.train()
    if not phase.train_backbone:
        _unwrap(model).backbone.eval()  # frozen features: BatchNorm statistics stay fixed too


def _unwrap(model):
    return getattr(model, "module", model)


def _world_and_rank() -> tuple[int, int]:
    """From the process group when the launcher made one (Ray Train), else from the environment
    that Accelerate will use to make it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("crdist", "DeepSpeed"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
