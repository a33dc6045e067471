"""Turn a benchmark into shards plus a manifest, atomically, or reuse a finished preparation.

The shards are built in a hidden sibling directory and renamed into place after the manifest is
written, so a killed preparation never leaves a directory that looks finished; a rerun starts over.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

import crdist
from crdist.data.benchmarks import BENCHMARKS
from crdist.data.config import DataConfig
from crdist.data.manifest import FILENAME, ImageInfo, Manifest, SplitRecord, TaskRecord
from crdist.data.rawfiles import changed_raw_files, write_raw_files
from crdist.data.shards import verify
from crdist.data.tasks import SPLITS, TaskError
from crdist.data.writer import ShardPlan, write_all
from crdist.errors import CrdistError


class PrepareError(CrdistError, RuntimeError):
    pass


_HOST = socket.gethostname().replace("-", "_")


def prepare(cfg: DataConfig, log: Callable[[str], None] = print) -> Manifest:
    out = cfg.shards_dir()
    params = cfg.content_params()
    if cfg.stream_url:
        # The shards live elsewhere (object storage): only the manifest is needed here.
        if not (out / FILENAME).is_file():
            raise PrepareError(f"data.stream_url is set, so the shards are read from {cfg.stream_url}; copy their "
                               f"{FILENAME} into {out} (data.shards) so the driver can plan the study")
        return _reuse(out, params, log, remote=cfg.stream_url)
    if (out / FILENAME).is_file():
        return _reuse(out, params, log, raw_root=cfg.root)
    if out.exists() and any(out.iterdir()):
        raise PrepareError(
            f"{out} exists but holds no {FILENAME}: it is not a crdist preparation. "
            "Point data.shards at a new directory or remove this one."
        )
    _remove_stale_partials(out)
    started = time.perf_counter()
    tmp = out.parent / f".{out.name}.partial-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        manifest = _build(cfg, params, tmp, log)
        if out.exists():
            out.rmdir()  # empty, checked above (or filled meanwhile: ENOTEMPTY below)
        os.rename(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY) and (out / FILENAME).is_file():
            return _reuse(out, params, log, raw_root=cfg.root)  # another process finished it first
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest.root = out.resolve()
    seconds = time.perf_counter() - started
    total = sum(s.count for t in manifest.tasks for s in t.splits.values())
    log(f"prepared {cfg.benchmark}: {total:,} samples in {seconds:.1f} s ({total / seconds:,.0f} samples/s, "
        f"{os.cpu_count()} processes) → {out}")
    return manifest


def _reuse(out: Path, params: dict, log: Callable[[str], None], remote: str | None = None,
           raw_root: str | None = None) -> Manifest:
    """Reuse a finished preparation when it was made with the same options from raw files that have
    not changed since, and its shards still match the manifest: sizes, and a re-hash of any shard
    whose modification time changed (``crdist prepare --verify`` re-hashes every shard)."""
    manifest = Manifest.load(out)
    if manifest.params != params:
        changed = sorted(k for k in set(params) | set(manifest.params) if params.get(k) != manifest.params.get(k))
        details = ", ".join(f"{k}: {manifest.params.get(k)!r} there, {params.get(k)!r} asked" for k in changed)
        raise PrepareError(
            f"{out} holds a different preparation ({details}). Point data.shards at another directory or remove it."
        )
    if remote:
        log(f"streaming shards through {remote} (manifest {out / FILENAME})")
        return manifest
    if raw_root is not None and Path(raw_root).expanduser().exists():
        changed = changed_raw_files(out, Path(raw_root))
        if changed:
            shown = "\n  ".join(changed[:10]) + (f"\n  … and {len(changed) - 10} more" if len(changed) > 10 else "")
            raise PrepareError(
                f"{out} was prepared from raw files that have changed since ({len(changed)} file(s)):\n  {shown}\n"
                f"Its shards no longer match the data. Remove {out} (or point data.shards at a new directory) "
                f"to prepare again."
            )
    problems = verify(manifest, rehash="if-modified")
    if problems:
        raise PrepareError(f"{out}: the shards do not match the manifest:\n  " + "\n  ".join(problems))
    log(f"reusing prepared shards in {out}")
    return manifest


def _build(cfg: DataConfig, params: dict, directory: Path, log: Callable[[str], None]) -> Manifest:
    try:
        source, tasks = BENCHMARKS.get(cfg.benchmark)(cfg)
    except TaskError as err:
        raise PrepareError(f"{cfg.benchmark}: {err}") from None
    try:
        return _write(cfg, params, directory, source, tasks, log)
    finally:
        if source.cleanup is not None:
            source.cleanup()


def _write(cfg: DataConfig, params: dict, directory: Path, source, tasks, log: Callable[[str], None]) -> Manifest:
    # Train and test first: writing them checks every image, so the adaptation subsets (drawn from
    # train) can pass over the unreadable ones that --skip-corrupt left out.
    plans, places = _plan(cfg, source, tasks, {t.index: t.indices for t in tasks})
    results = write_all(source, plans, directory, cfg.skip_corrupt, log)
    unreadable = {row for r in results for row in r.skipped_rows}
    try:
        adapt = {t.index: {"adapt": t.adapt(unreadable)} for t in tasks}
    except TaskError as err:
        raise PrepareError(f"{cfg.benchmark}: {err}") from None
    plans, more_places = _plan(cfg, source, tasks, adapt)
    results += write_all(source, plans, directory, cfg.skip_corrupt, log)
    places += more_places
    records = []
    for task in tasks:
        splits = {}
        for split in SPLITS:
            mine = [r for r, place in zip(results, places) if place == (task.index, split)]
            per_class = Counter()
            for r in mine:
                per_class.update(r.per_class)
            count = sum(r.record.count for r in mine)
            if count == 0 and split != "adapt":
                raise PrepareError(f"{cfg.benchmark}: task {task.index} ({task.name}) has no {split} samples")
            splits[split] = SplitRecord(count, {str(c): n for c, n in sorted(per_class.items())},
                                        [r.record for r in mine])
        records.append(TaskRecord(index=task.index, name=task.name, classes=task.classes, splits=splits))
    # An adaptation sample is also a train sample: a bad one is met (and listed) once.
    skipped = list({s["sample"]: s for s in source.skipped + [s for r in results for s in r.skipped]}.values())
    if skipped:
        log(f"skipped {len(skipped)} unreadable sample(s), listed in the manifest")
    manifest = Manifest(
        benchmark=cfg.benchmark,
        crdist_version=crdist.__version__,
        source={"description": source.description, "fingerprint": source.fingerprint},
        params=params,
        class_names=source.class_names,
        image=_image_info(cfg, source, results) if source.modality == "image" else None,
        tasks=records,
        modality=source.modality,
        skipped=skipped,
    )
    if cfg.root is not None:
        write_raw_files(directory, Path(cfg.root), source.raw_files())
    manifest.save(directory)  # last: its presence marks the preparation finished
    return manifest


def _plan(cfg: DataConfig, source, tasks, rows_of: dict) -> tuple[list[ShardPlan], list[tuple[int, str]]]:
    """Which rows go into which shard: per task and split (those in ``rows_of[task]``), train rows
    shuffled (seeded) so that every shard mixes the task's classes."""
    rng = np.random.default_rng(cfg.seed)
    plans, places = [], []
    for task in tasks:
        for split, rows in rows_of[task.index].items():
            if split == "train":
                rows = rng.permutation(rows)
            size = cfg.shard_size or max(1, min(1000, math.ceil(len(rows) / 8)))
            for k, start in enumerate(range(0, len(rows), size)):
                chunk = rows[start : start + size].tolist()
                keys = [f"{task.index:02d}-{split}-{_tar_key(source.samples[r].key)}" for r in chunk]
                plans.append(ShardPlan(f"task-{task.index}/{split}-{k:05d}", chunk, keys, stats=split == "train"))
                places.append((task.index, split))
    return plans, places


def _tar_key(key: str) -> str:
    # WebDataset splits a member name at its first dot into key and extension.
    return key.replace(".", "_").replace("/", "_")


def _image_info(cfg: DataConfig, source, results) -> ImageInfo:
    sizes = set().union(*(r.sizes for r in results))
    if cfg.image_size is None and len(sizes) > 1:
        shown = ", ".join(f"{w}×{h}" for w, h in sorted(sizes)[:5])
        raise PrepareError(f"{cfg.benchmark}: images come in {len(sizes)} sizes ({shown}…); set data.image_size "
                           "to resize them to one square size when they are decoded")
    width, height = (cfg.image_size, cfg.image_size) if cfg.image_size else next(iter(sizes))
    pixels = sum(r.pixels for r in results)
    total = sum(r.pixel_sum for r in results if r.pixel_sum is not None)
    squares = sum(r.pixel_sq_sum for r in results if r.pixel_sq_sum is not None)
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 1e-12))
    return ImageInfo(channels=source.channels, height=height, width=width, mean=[float(m) for m in mean],
                     std=[float(s) for s in std], resize=cfg.image_size is not None)


def _remove_stale_partials(out: Path) -> None:
    """Remove partial builds left by killed preparations on this host (their process is gone).

    Partials of other hosts (shared storage) are left alone: their process may be alive.
    """
    if not out.parent.is_dir():
        return
    for partial in out.parent.glob(f".{out.name}.partial-{_HOST}-*"):
        try:
            pid = int(partial.name.removeprefix(f".{out.name}.partial-{_HOST}-").split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            continue
