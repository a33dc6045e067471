"""What a train job is, as the driver and the workers both see it: ``TrainJob``, one method's
training on one task (picklable: the driver builds it, Ray ships it to every worker), and
``TaskResult``, the summary a worker writes beside the task's weights.

Kept free of torch and of the training code, so the driver's scheduler imports it cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from crdist.integrity import verify

if TYPE_CHECKING:
    from crdist.models.config import ModelConfig
    from crdist.train.checkpoint import CheckpointConfig
    from crdist.train.config import TrainConfig


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
    # Per rank: resident set high-water mark on CPU, CUDA max allocated on GPU (crdist/memory.py).
    peak_memory_bytes: list[int] = field(default_factory=list)
    memory_measure: str = ""  # "cpu-rss" or "cuda-max-allocated"
    # Per rank, when the job started: the process after its imports (what the peak grew from).
    start_memory_bytes: list[int] = field(default_factory=list)
    flops_per_sample: float | None = None  # training FLOPs (3 × forward) per sample; null for text
    parameters: int = 0  # of the whole classifier (backbone and head)
    mfu: float | None = None  # on GPU: model FLOP utilisation against the GPU's bf16 peak
    state_ranks: int = 0  # how many ranks wrote the method's state beside c_i (0: the method keeps none)

    @classmethod
    def read(cls, weights: str | Path) -> "TaskResult":
        """The summary written beside the weights ``weights`` (``c_<i>.train.json``)."""
        verify(summary_path(weights))
        summary = json.loads(summary_path(weights).read_text())
        summary.pop("job", None)
        return cls(**summary)


def summary_path(weights: str | Path) -> Path:
    """Where a task's summary lies: beside its weights, ``c_<i>.train.json``."""
    return Path(weights).with_suffix(".train.json")
