"""Write a planned set of shards from a source, one shard per process, on every core.

Each shard worker reads its samples (array rows, image files or texts), checks every image by
decoding it fully (a truncated file fails here, naming it, not later in a training worker),
writes the tar, hashes it, and returns per-class counts, the image sizes it saw and per-channel
pixel sums (so the stream's normalisation is exact, without a second pass).
"""

from __future__ import annotations

import io
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from crdist.data.manifest import ShardRecord
from crdist.data.shards import write_shard
from crdist.data.sources.base import Source, SourceError, encode

_SOURCE: Source | None = None  # the source being written, inherited by forked shard workers


@dataclass
class ShardPlan:
    path: str  # relative to the output directory, without ".tar"
    rows: list[int]  # indices into source.samples
    keys: list[str]  # tar keys, one per row
    stats: bool  # accumulate pixel statistics (train shards)


@dataclass
class ShardResult:
    record: ShardRecord
    per_class: Counter = field(default_factory=Counter)
    skipped: list[dict] = field(default_factory=list)
    skipped_rows: list[int] = field(default_factory=list)  # indices into source.samples
    sizes: set = field(default_factory=set)  # (width, height) of the images seen
    pixel_sum: np.ndarray | None = None  # per channel, values in [0, 1]
    pixel_sq_sum: np.ndarray | None = None
    pixels: int = 0  # pixels per channel summed


def write_all(
    source: Source,
    plans: list[ShardPlan],
    directory: Path,
    skip_corrupt: bool,
    log: Callable[[str], None],
    processes: int | None = None,
) -> list[ShardResult]:
    global _SOURCE
    _SOURCE = source
    processes = max(1, min(processes or os.cpu_count() or 1, len(plans)))
    started, done, samples, last_report = time.perf_counter(), 0, 0, time.perf_counter()
    results: list[ShardResult | None] = [None] * len(plans)
    work = [(i, plan, directory, skip_corrupt) for i, plan in enumerate(plans)]
    # A process pool that notices a worker killed (e.g. out of memory) instead of waiting forever.
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) if processes > 1 else None
    try:
        finished = pool.map(_write_one, work) if pool else map(_write_one, work)
        for i, result in finished:
            results[i] = result
            done += 1
            samples += result.record.count
            if time.perf_counter() - last_report > 10:
                last_report = time.perf_counter()
                rate = samples / (last_report - started)
                log(f"{done}/{len(plans)} shards, {samples:,} samples ({rate:,.0f} samples/s)")
    except BrokenProcessPool:
        raise SourceError("a shard-writing process died (killed, or out of memory); nothing was kept") from None
    finally:
        _SOURCE = None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results  # type: ignore[return-value]


def _write_one(args) -> tuple[int, ShardResult]:
    index, plan, directory, skip_corrupt = args
    source = _SOURCE
    result = ShardResult(record=None)  # type: ignore[arg-type]
    channels = source.channels

    def samples():
        for row, key in zip(plan.rows, plan.keys):
            sample = source.samples[row]
            try:
                members = encode(source, sample, key)
                if source.modality == "image":
                    pixels = _pixels(members, channels, sample.origin)
                    result.sizes.add((pixels.shape[1], pixels.shape[0]))
                    if plan.stats:
                        _accumulate(result, pixels)
            except SourceError as err:
                if not skip_corrupt:
                    raise
                result.skipped.append({"sample": sample.origin, "reason": str(err)})
                result.skipped_rows.append(row)
                continue
            result.per_class[sample.label] += 1
            yield members

    result.record = write_shard(directory, plan.path, samples())
    return index, result


def _pixels(members: dict, channels: int, origin: str) -> np.ndarray:
    data = members.get("png") or members.get("jpg")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except Exception as err:  # PIL raises many types for bad files
        raise SourceError(f"{origin}: unreadable or truncated image ({type(err).__name__}: {err})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _accumulate(result: ShardResult, pixels: np.ndarray) -> None:
    values = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64) / 255.0
    if result.pixel_sum is None:
        result.pixel_sum = np.zeros(values.shape[1])
        result.pixel_sq_sum = np.zeros(values.shape[1])
    result.pixel_sum += values.sum(axis=0)
    result.pixel_sq_sum += (values**2).sum(axis=0)
    result.pixels += values.shape[0]
