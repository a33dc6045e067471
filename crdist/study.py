"""The whole configuration of a study: one section per component, loaded from YAML."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from crdist import config
from crdist.config import require
from crdist.data.config import DataConfig
from crdist.evaluate.config import EvalConfig
from crdist.methods.lpft import LPFTConfig
from crdist.models.config import ModelConfig
from crdist.orchestrate.config import ClusterConfig
from crdist.train.checkpoint import CheckpointConfig
from crdist.train.config import TrainConfig


@dataclass(frozen=True)
class StudyConfig:
    name: str = "demo"
    seed: int = 0
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    lpft: LPFTConfig = field(default_factory=LPFTConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self) -> None:
        require(
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) is not None,
            "name",
            f"must be a plain directory name (letters, digits, . _ -), got {self.name!r}",
        )


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    return config.load(StudyConfig, path, overrides)
