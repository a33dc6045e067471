from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from crdist.config import require


@dataclass(frozen=True)
class DataConfig:
    benchmark: str = "seq-digits"
    # Where the raw dataset lives (unused by seq-digits, which ships with scikit-learn).
    root: str | None = None
    # Directory of prepared shards plus manifest.json; prepared on first use, reused after.
    # null = shards/<benchmark>-<hash of the options below>, so changing an option never
    # collides with an earlier preparation.
    shards: str | None = None
    tasks: int = 5
    classes_per_task: int = 2
    # Class order of the stream; null = 0, 1, 2, ...
    class_order: list[int] | None = None
    # Share of each class held out as the test split (benchmarks without an official test split).
    test_fraction: float = 0.3
    # Size per class of the fixed adaptation subset (drawn from the train split, seeded).
    adapt_per_class: int = 30
    # Seeds the test/adaptation split and the order of samples in the shards.
    seed: int = 0
    # Samples per tar shard: small enough that every rank and loader worker gets shards.
    shard_size: int = 32

    def content_params(self) -> dict:
        """Every option that determines what the shards contain (not where they are)."""
        params = asdict(self)
        params.pop("shards")
        params.pop("root")
        return params

    def shards_dir(self) -> Path:
        if self.shards is not None:
            return Path(self.shards)
        digest = hashlib.sha256(json.dumps(self.content_params(), sort_keys=True).encode()).hexdigest()[:8]
        return Path("shards") / f"{self.benchmark}-{digest}"

    def validate(self) -> None:
        from crdist.data.benchmarks import BENCHMARKS

        require(self.benchmark in BENCHMARKS, "benchmark", BENCHMARKS.unknown_message(self.benchmark))
        require(self.tasks >= 1, "tasks", f"must be at least 1 (got {self.tasks})")
        require(self.classes_per_task >= 1, "classes_per_task", f"must be at least 1 (got {self.classes_per_task})")
        if self.class_order is not None:
            require(
                len(set(self.class_order)) == len(self.class_order),
                "class_order",
                "lists a class more than once",
            )
            require(
                len(self.class_order) >= self.tasks * self.classes_per_task,
                "class_order",
                f"has {len(self.class_order)} classes, fewer than tasks × classes_per_task = "
                f"{self.tasks * self.classes_per_task}",
            )
        require(0.0 < self.test_fraction < 1.0, "test_fraction", f"must be in (0, 1) (got {self.test_fraction})")
        require(self.adapt_per_class >= 2, "adapt_per_class", f"must be at least 2 (got {self.adapt_per_class})")
        require(self.shard_size >= 1, "shard_size", f"must be at least 1 (got {self.shard_size})")
