"""Decoded shards kept in a loading process across a task's epochs, up to a byte budget.

A task trains for many epochs over the same shards. Reading a shard (tar headers, checksums,
grouping members into samples) and decoding its images (PNG or JPEG → pixels) is all that a
sample costs the stream. Each loading process (a rank's loader worker, or the rank itself without
loader workers) decodes each shard it reads into light samples (shard, key, label bytes, pixels)
and keeps them; a later epoch that reaches the same shard reads it from memory and opens no file.

What is kept is the uint8 image after colour conversion and resizing, before augmentation and
normalisation, which stay per epoch. The kept samples come in the order the tar holds them, so
the shuffle, the augmentation and the batches that follow are the same bit for bit with or
without the cache, and a resumed run may have it or not. A shard is kept whole or not at all:
once the budget cannot hold the next one, nothing more is added (nothing is evicted: the order of
eviction would make the hit rate, not the results, depend on the shuffle). The budget counts pixel
bytes and is per loading process: a node holds at most workers × max(loader_workers, 1) × the
budget, plus a few hundred bytes per sample for the sample's record.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np


class ShardCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self.hits = self.misses = 0  # shards served from memory / read from their files
        self._shards: dict[str, list[dict]] = {}

    def samples(self, url: str, read: Callable[[], Iterable[dict]],
                pixels_of: Callable[[dict], np.ndarray]) -> Iterator[dict]:
        """The light samples of shard ``url``: from memory when it is kept, else from ``read()``
        (its raw samples, in tar order) decoded by ``pixels_of``, and kept if it fits whole."""
        kept = self._shards.get(url)
        if kept is not None:
            self.hits += 1
            for sample in kept:
                yield dict(sample)  # a record of its own: nothing downstream can change the kept one
            return
        self.misses += 1
        decoded, size = [], 0
        for raw in read():
            pixels = pixels_of(raw)
            pixels.setflags(write=False)  # shared by every later epoch: nothing may change it in place
            sample = {"__url__": raw.get("__url__", url), "__key__": raw["__key__"], "cls": raw.get("cls"),
                      "pixels": pixels}
            decoded.append(sample)
            size += pixels.nbytes
            yield dict(sample)
        # Only a shard read to its end is kept: a pass left half-read (the last step of a task came
        # mid-epoch) must not leave a partial shard behind.
        if self.used_bytes + size <= self.budget_bytes:
            self._shards[url] = decoded
            self.used_bytes += size

    def __len__(self) -> int:
        """Samples kept."""
        return sum(len(samples) for samples in self._shards.values())
