from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crdist.config import require


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "small-cnn"
    # Local safetensors file to start from (e.g. pretrained weights); null = seeded random init.
    # Nothing is ever downloaded.
    init: str | None = None
    # "shared": one linear layer over every class of the stream, never re-initialised (the paper's
    # choice). "per_task": the same layer, but each task's loss sees only its own classes' logits.
    head: Literal["shared", "per_task"] = "shared"

    def validate(self) -> None:
        from crdist.models.backbones import BACKBONES

        require(self.backbone in BACKBONES, "backbone", BACKBONES.unknown_message(self.backbone))
