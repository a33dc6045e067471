from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from crdist.config import require


@dataclass(frozen=True)
class TrainConfig:
    """How each method trains the backbone on each task: workers, ZeRO stage, optimizer, schedule."""

    methods: list[str] = field(default_factory=lambda: ["sgd", "lpft"])
    """Methods to compare; each trains its own chain c_1..c_T from the same c_0."""
    workers: int = 2
    """Ray Train workers of each method's train job (one process, and one GPU with use_gpu, each)."""
    cpus_per_worker: float = 1.0
    """Ray CPUs each worker reserves; also its torch threads (at least 1)."""
    use_gpu: bool = False
    """Give each worker one GPU (NCCL); false = CPU workers (gloo)."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage: 0 = plain data parallel; 1 shards the optimizer state across workers,
    2 also the gradients, 3 also the parameters."""
    epochs: int = 5
    """Passes over each task's train split."""
    max_steps: int | None = None
    """Cap on steps per task (for short runs); null = every step of every epoch."""
    batch_size: int = 16
    """Samples per worker per micro-batch."""
    global_batch: int | None = None
    """Samples per optimizer step over all workers; null = batch_size × workers. When set, each
    worker accumulates global_batch / (batch_size × workers) micro-batches per step, so the
    global batch stays the same on any number of workers: a run may then resume on fewer (or
    more) workers than it started with (train.workers becomes an execution setting)."""
    lr: float = 0.003
    """Peak learning rate of each training phase (after warmup)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """The optimizer; its state starts fresh at each task and phase."""
    momentum: float = 0.9
    """optimizer: sgd only: the momentum."""
    nesterov: bool = False
    """optimizer: sgd only: Nesterov momentum."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for adamw, L2 for sgd)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning rate within each phase after the warmup: cosine decay to 0, or constant."""
    warmup_fraction: float = 0.1
    """Share of each phase's steps spent warming the learning rate up linearly to lr."""
    grad_clip: float = 1.0
    """Largest gradient norm; larger gradients are scaled down to it (0 = off)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision: fp32, or bf16 mixed precision."""
    activation_checkpointing: bool = False
    """Recompute each backbone block's activations in the backward pass instead of keeping them
    (crdist/models/activation_checkpointing.py): less memory for about one more forward of compute."""
    loader_workers: int = 2
    """WebDataset loader processes per worker (0 = load in the worker itself)."""
    shuffle_buffer: int = 256
    """Samples in each loading process's shuffle buffer."""
    decoded_cache_mb: float = 256.0
    """Decoded shards each loading process keeps across a task's epochs, in MiB of pixels
    (crdist/data/cache.py): later epochs neither read nor decode what fits. Per loader worker (or
    per worker without them); 0 = off."""
    data_order: Literal["sharded", "global"] = "sharded"
    """Which samples a worker trains on (crdist/data/stream.py): "sharded" = each worker streams its
    own shards; "global" = every worker reads the whole split in one seeded order and takes its slice
    of each global batch, so the result does not depend on the worker count (N× the reading)."""
    log_every: int = 10
    """Steps between progress reports."""
    max_failures: int = 3
    """Worker-group restarts Ray Train allows a method's train job (each resumes from the latest
    checkpoint); a job that spends them after finishing a task is started again from its next."""
    max_preemption_failures: int = -1
    """Restarts after a node preemption (a drained node that went), counted apart from max_failures;
    -1 = no limit."""
    placement: Literal["PACK", "SPREAD"] = "PACK"
    """How a job's workers are placed on the cluster: PACK (fewest nodes) or SPREAD (one per node)."""

    def validate(self) -> None:
        from crdist.methods import METHODS

        require(len(self.methods) >= 1, "methods", "must name at least one method")
        for i, name in enumerate(self.methods):
            require(name in METHODS, f"methods[{i}]", METHODS.unknown_message(name))
        require(len(set(self.methods)) == len(self.methods), "methods", "lists a method more than once")
        require(self.workers >= 1, "workers", f"must be at least 1 (got {self.workers})")
        require(self.cpus_per_worker > 0, "cpus_per_worker", f"must be positive (got {self.cpus_per_worker})")
        require(self.epochs >= 1, "epochs", f"must be at least 1 (got {self.epochs})")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be at least 1 (got {self.max_steps})")
        require(self.batch_size >= 1, "batch_size", f"must be at least 1 (got {self.batch_size})")
        require(self.global_batch is None or self.global_batch % (self.batch_size * self.workers) == 0,
                "global_batch", f"must be a multiple of train.batch_size × train.workers = "
                f"{self.batch_size} × {self.workers} = {self.batch_size * self.workers} (got {self.global_batch})")
        require(self.lr > 0, "lr", f"must be positive (got {self.lr})")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1) (got {self.momentum})")
        require(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0), "nesterov",
                "needs optimizer: sgd with a positive momentum")
        require(self.weight_decay >= 0, "weight_decay", f"must be non-negative (got {self.weight_decay})")
        require(0 <= self.warmup_fraction < 1, "warmup_fraction", f"must be in [0, 1) (got {self.warmup_fraction})")
        require(self.grad_clip >= 0, "grad_clip", f"must be non-negative, 0 = off (got {self.grad_clip})")
        require(self.loader_workers >= 0, "loader_workers", f"must be non-negative (got {self.loader_workers})")
        require(self.shuffle_buffer >= 1, "shuffle_buffer", f"must be at least 1 (got {self.shuffle_buffer})")
        require(self.decoded_cache_mb >= 0, "decoded_cache_mb", f"must be non-negative, 0 = off (got {self.decoded_cache_mb})")
        require(self.log_every >= 1, "log_every", f"must be at least 1 (got {self.log_every})")
        require(self.max_failures >= 0, "max_failures", f"must be non-negative (got {self.max_failures})")
        require(self.max_preemption_failures >= -1, "max_preemption_failures",
                f"must be -1 (no limit) or non-negative (got {self.max_preemption_failures})")

    def accumulation(self, world: int) -> int:
        """Micro-batches each of ``world`` workers accumulates per optimizer step."""
        if self.global_batch is None:
            return 1
        per_pass = self.batch_size * world
        if self.global_batch % per_pass:
            from crdist.config import ConfigError

            raise ConfigError(f"train.global_batch={self.global_batch} is not a multiple of train.batch_size × "
                              f"workers = {self.batch_size} × {world}; choose a worker count that divides it")
        return self.global_batch // per_pass
