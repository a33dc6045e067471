from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ImageSet:
    """A labelled set of uint8 images, N × H × W × C, as read from a raw source."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    # Identifies the source content: a different fingerprint means different shards.
    fingerprint: str
    description: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 N×H×W×C, got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
