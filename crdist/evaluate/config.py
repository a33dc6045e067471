from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from crdist.config import require
from crdist.evaluate.protocols.finetune import FinetuneConfig
from crdist.evaluate.protocols.knn import KNNConfig
from crdist.evaluate.protocols.linear import LinearConfig


@dataclass(frozen=True)
class EvalConfig:
    """How every checkpoint c_i is measured on every task j: the protocols and their resources."""

    protocols: list[str] = field(default_factory=lambda: ["knn", "linear", "finetune"])
    """Protocols that measure each checkpoint on each task (knn, linear, finetune); each fills its
    own accuracy matrix."""
    adapt: Literal["subset", "train"] = "subset"
    """What kNN's bank and the linear probe are fitted on: "subset" = the fixed adaptation subset
    (data.adapt_per_class per class); "train" = the task's whole train split, streamed in batches
    (the paper's code, for both). Fine-tuning adaptation always uses the subset."""
    cpus: float = 1.0
    """Ray CPUs per evaluation task."""
    gpus: float = 0.0
    """Ray GPUs per evaluation task (0 = CPU only; a fraction shares a GPU)."""
    memory_gib: float | None = None
    """Ray memory reserved per evaluation task (null = none): what the scheduler keeps free for it.
    An evaluation streams its splits, so its peak is the model, one batch and the split's features."""
    batch_size: int = 256
    """Samples per batch when streaming a split through the backbone."""
    concurrent: int | None = None
    """Evaluations running at once. null = as many as fit beside one train job, so evaluations
    never hold the CPUs that the next task's training is waiting for."""
    # Each protocol's own options; their classes' docstrings document them.
    knn: KNNConfig = field(default_factory=KNNConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def validate(self) -> None:
        from crdist.evaluate.protocols import PROTOCOLS

        require(len(self.protocols) >= 1, "protocols", "must name at least one protocol")
        for i, name in enumerate(self.protocols):
            require(name in PROTOCOLS, f"protocols[{i}]", PROTOCOLS.unknown_message(name))
        require(len(set(self.protocols)) == len(self.protocols), "protocols", "lists a protocol more than once")
        require(self.cpus > 0, "cpus", f"must be positive (got {self.cpus})")
        require(self.gpus >= 0, "gpus", f"must be non-negative, 0 = CPU only (got {self.gpus})")
        require(self.memory_gib is None or self.memory_gib > 0, "memory_gib",
                f"must be positive or null (got {self.memory_gib})")
        require(self.batch_size >= 1, "batch_size", f"must be at least 1 (got {self.batch_size})")
        require(self.concurrent is None or self.concurrent >= 1, "concurrent",
                f"must be at least 1 or null (got {self.concurrent})")
