"""The whole configuration of a study: one section per component, loaded from YAML.

Besides the fixed sections, every method with options contributes its own section, named after
it (``lpft:``, ``der:``, ``ewc:`` …): the method's file owns its config class, and the study is
assembled from the registry, so a new method never edits this file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from pathlib import Path
from typing import Sequence

from crdist import config
from crdist.config import require
from crdist.data.config import DataConfig
from crdist.evaluate.config import EvalConfig
from crdist.methods import METHODS
from crdist.models.config import ModelConfig
from crdist.orchestrate.config import ClusterConfig
from crdist.orchestrate.pretrain import PretrainConfig
from crdist.train.checkpoint import CheckpointConfig
from crdist.track.config import TrackingConfig
from crdist.train.config import TrainConfig


def method_sections() -> dict[str, type]:
    """Method name → its config class, for every registered method that has options."""
    return {name: METHODS.get(name).Config for name in METHODS.names() if METHODS.get(name).Config is not None}


def _validate(self) -> None:
    require(
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) is not None,
        "name",
        f"must be a plain directory name (letters, digits, . _ -), got {self.name!r}",
    )
    for name in self.train.methods:
        method = METHODS.get(name)
        require(self.train.zero_stage in method.zero_stages, "train.zero_stage",
                f"method {name} cannot run at ZeRO-{self.train.zero_stage}: {method.zero_stage_limit}; "
                f"use train.zero_stage {max(method.zero_stages)} or lower, or leave {name} out of train.methods")


    if self.train.activation_checkpointing:
        from crdist.models.backbones import BACKBONES

        require(BACKBONES.get(self.model.backbone).blocks is not None, "train.activation_checkpointing",
                f"backbone {self.model.backbone} has no blocks to checkpoint; the ResNets, DenseNet-121, MobileNetV2 and "
                "the ViTs have")


def _method_config(self, name: str):
    """The config section of method ``name`` (None for a method without options)."""
    return getattr(self, name, None) if name in method_sections() else None


@dataclasses.dataclass(frozen=True)
class StudySections:
    """The keys every study has; StudyConfig adds the methods' sections."""

    name: str = "demo"
    """The run's name: its directory under runs_dir (crdist run --name overrides it)."""
    seed: int = 0
    """Seeds what a run draws: the initial model, training and evaluation (data.seed and pretrain.seed
    seed their own); a sweep's seed axis varies it."""
    runs_dir: str = "runs"
    """Where run directories go: runs_dir/name."""
    # The sections: their classes' docstrings document them.
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


StudyConfig = dataclasses.make_dataclass(
    "StudyConfig",
    [(name, cls, field(default_factory=cls)) for name, cls in method_sections().items()],
    bases=(StudySections,),
    frozen=True,
    namespace={"validate": _validate, "method_config": _method_config, "__module__": __name__},
)


def load_study(path: str | Path, overrides: Sequence[str] = ()):
    return config.load(StudyConfig, path, overrides)
