"""Decoded pixels kept in a loading process across a task's epochs, up to a byte budget.

A task trains for many epochs over the same samples, and decoding an image (PNG or JPEG → pixels)
is most of what a sample costs the stream. Each loading process (a rank's loader worker, or the
rank itself without loader workers) keeps the pixels it decoded, keyed by shard and sample, and
later epochs read them from memory. The tar members are still read, since they arrive in the
order the shuffle expects and cost microseconds each.

What is kept is the uint8 image after colour conversion and resizing, before augmentation and
normalisation, which stay per epoch: a cached sample gives the same floats bit for bit, so the
cache changes no result, and a resumed run may have it or not. Once the budget is spent nothing
more is added (nothing is evicted: the order of eviction would make the hit rate, not the
results, depend on the shuffle). The budget is per loading process: a node holds at most
workers × max(loader_workers, 1) × the budget.
"""

from __future__ import annotations

import numpy as np


class PixelCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self.hits = self.misses = 0
        self._pixels: dict[tuple[str, str], np.ndarray] = {}

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        pixels = self._pixels.get(key)
        if pixels is None:
            self.misses += 1
        else:
            self.hits += 1
        return pixels

    def put(self, key: tuple[str, str], pixels: np.ndarray) -> None:
        if self.used_bytes + pixels.nbytes > self.budget_bytes:
            return
        pixels.setflags(write=False)  # shared by every later epoch: nothing may change it in place
        self._pixels[key] = pixels
        self.used_bytes += pixels.nbytes

    def __len__(self) -> int:
        return len(self._pixels)
