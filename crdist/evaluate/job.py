"""One evaluation job: checkpoint c_i measured on task j by every protocol, written as JSON.

Features of (c_i, task j) are computed once and shared by the protocols that use them. The test
split (and the train split, for evaluate.adapt: train) is streamed in batches; only the small
adaptation subset is read whole. With evaluate.gpus the model runs on the job's GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from crdist.atomic import room_for
from crdist.integrity import write_sealed_json
from crdist.data.manifest import Manifest
from crdist.data.samples import make_decoder
from crdist.data.stream import read_split, stream_split
from crdist.errors import CrdistError
from crdist.evaluate.config import EvalConfig
from crdist.evaluate.context import EvalContext
from crdist.evaluate.protocols import PROTOCOLS
from crdist.memory import peak_memory_bytes, reset_peak_memory
from crdist.models.classifier import build_classifier
from crdist.models.config import ModelConfig
from crdist.models.weights import load_into
from crdist.seeding import derive_seed


class EvalError(CrdistError, RuntimeError):
    pass


@dataclass(frozen=True)
class EvalJob:
    model: ModelConfig
    evaluate: EvalConfig
    seed: int
    stream_url: str | None  # data.stream_url
    checkpoint: str  # e.g. "c_0" or "sgd/c_3"
    row: int  # i: 0 for the initial model, 1..T after task i
    task: int  # j
    weights: str
    shards: str
    output: str

    @classmethod
    def from_study(cls, study, **job) -> "EvalJob":
        return cls(model=study.model, evaluate=study.evaluate, seed=study.seed, stream_url=study.data.stream_url,
                   **job)

    @property
    def label(self) -> str:
        return f"{self.checkpoint} × task {self.task}"


def run_eval_job(job: EvalJob, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    device = _device(job.evaluate)
    reset_peak_memory(device)
    manifest = Manifest.load(job.shards)
    model = build_classifier(job.model, manifest.in_channels, manifest.num_classes, job.seed,
                             image_size=manifest.image_size)
    load_into(model, job.weights, sealed=True)  # crdist's own c_i, checked against its digest
    model.eval().to(device)
    classes = manifest.task(job.task).classes
    decode = make_decoder(manifest, job.model)
    adapt_inputs, adapt_labels = read_split(manifest, job.task, "adapt", decode, job.stream_url)
    context = EvalContext(
        model=model,
        adapt_inputs=adapt_inputs,
        adapt_labels=_task_local(adapt_labels, classes),
        test=_streamed(manifest, job, "test", decode, classes),
        num_classes=len(classes),
        seed=eval_seed(job.seed, job.task),
        config=job.evaluate,
        bank=_streamed(manifest, job, "train", decode, classes) if job.evaluate.adapt == "train" else None,
        device=device,
    )
    accuracy, protocol_seconds = {}, {}
    for name in job.evaluate.protocols:
        protocol_started, features_before = time.perf_counter(), context.feature_seconds
        accuracy[name] = PROTOCOLS.get(name)(context)
        # The shared features are counted once, apart, not in the protocol that computed them.
        elapsed = time.perf_counter() - protocol_started - (context.feature_seconds - features_before)
        protocol_seconds[name] = round(elapsed, 3)
    result = {
        "checkpoint": job.checkpoint,
        "row": job.row,
        "task": job.task,
        "accuracy": accuracy,
        "adapt_samples": len(adapt_labels),
        "bank_samples": len(context.bank_labels) if context.has_features() else None,
        "test_samples": len(context.test_labels),
        "seconds": round(time.perf_counter() - started, 3),
        "feature_seconds": round(context.feature_seconds, 3),
        "protocol_seconds": protocol_seconds,
        "details": context.details,
        "peak_memory_bytes": peak_memory_bytes(device),
        "device": str(device),
    }
    write_evaluation(Path(job.output), result)
    return result


def write_evaluation(path: Path, result: dict) -> None:
    """An evaluation's result, sealed with its digest; a disk without room says so (DiskFull)."""
    with room_for(path.parent, f"{path.name}, an evaluation's result", needed=64 * 1024):
        write_sealed_json(path, result)


def _device(cfg: EvalConfig) -> torch.device:
    if cfg.gpus <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise EvalError(f"evaluate.gpus is {cfg.gpus:g}, but this evaluation process sees no GPU "
                        "(torch.cuda.is_available() is False); set evaluate.gpus: 0 to evaluate on CPUs")
    return torch.device("cuda", torch.cuda.current_device())


def _streamed(manifest: Manifest, job: EvalJob, split: str, decode, classes: list[int]):
    """A split, streamed in batches of evaluate.batch_size with task-local labels, one pass per call."""
    def batches():
        for inputs, labels in stream_split(manifest, job.task, split, decode, job.stream_url,
                                           batch_size=job.evaluate.batch_size):
            yield inputs, _task_local(labels, classes)

    return batches


def eval_seed(seed: int, task: int) -> int:
    """The seed of every random choice in evaluating task ``task`` (fine-tuning's head and batches,
    the probe's folds): common random numbers. It depends on the study seed and the task alone, never
    on the checkpoint's row, its method or when the evaluation runs, so identical weights score
    identically in every row (``frozen`` forgets exactly 0) and two methods are compared on the same
    draws: their difference carries the protocol's noise once, not twice. 31 bits because
    scikit-learn wants a 32-bit seed."""
    return derive_seed(seed, "eval", task) % 2**31


def _task_local(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    lookup = {c: i for i, c in enumerate(classes)}
    return torch.tensor([lookup[int(y)] for y in labels], dtype=torch.long)

