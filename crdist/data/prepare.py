"""Turn a benchmark into shards plus a manifest, atomically, or reuse a finished preparation.

The shards are built in a hidden sibling directory and renamed into place after the manifest is
written, so a killed preparation never leaves a directory that looks finished; a rerun starts over.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

import crdist
from crdist.data.benchmarks import BENCHMARKS
from crdist.data.config import DataConfig
from crdist.data.manifest import FILENAME, ImageInfo, Manifest, SplitRecord, TaskRecord
from crdist.data.samples import encode_image_sample
from crdist.data.shards import verify, write_shards
from crdist.data.tasks import SPLITS
from crdist.errors import CrdistError


class PrepareError(CrdistError, RuntimeError):
    pass


_HOST = socket.gethostname().replace("-", "_")


def prepare(cfg: DataConfig, log: Callable[[str], None] = print) -> Manifest:
    out = cfg.shards_dir()
    params = cfg.content_params()
    if (out / FILENAME).is_file():
        return _reuse(out, params, log)
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
        manifest = _build(cfg, params, tmp)
        if out.exists():
            out.rmdir()  # empty, checked above (or filled meanwhile: ENOTEMPTY below)
        os.rename(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY) and (out / FILENAME).is_file():
            return _reuse(out, params, log)  # another process finished the same preparation first
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest.root = out.resolve()
    seconds = time.perf_counter() - started
    total = sum(s.count for t in manifest.tasks for name, s in t.splits.items() if name != "adapt")
    log(f"prepared {cfg.benchmark} in {seconds:.1f} s ({total / seconds:,.0f} samples/s) → {out}")
    return manifest


def _reuse(out: Path, params: dict, log: Callable[[str], None]) -> Manifest:
    manifest = Manifest.load(out)
    if manifest.params != params:
        changed = sorted(k for k in set(params) | set(manifest.params) if params.get(k) != manifest.params.get(k))
        details = ", ".join(f"{k}: {manifest.params.get(k)!r} there, {params.get(k)!r} asked" for k in changed)
        raise PrepareError(
            f"{out} holds a different preparation ({details}). Point data.shards at another directory or remove it."
        )
    problems = verify(manifest, rehash=False)
    if problems:
        raise PrepareError(f"{out}: the shards do not match the manifest:\n  " + "\n  ".join(problems))
    log(f"reusing prepared shards in {out}")
    return manifest


def _build(cfg: DataConfig, params: dict, directory: Path) -> Manifest:
    images, tasks = BENCHMARKS.get(cfg.benchmark)(cfg)
    rng = np.random.default_rng(cfg.seed)
    records = []
    for task in tasks:
        splits = {}
        for split in SPLITS:
            rows = task.indices[split]
            if split == "train":
                rows = rng.permutation(rows)  # mix classes within and across shards
            samples = (
                encode_image_sample(f"{task.index:02d}-{split}-{row:06d}", images.images[row], images.labels[row])
                for row in rows
            )
            shards = write_shards(directory, f"{task.name}/{split}", samples, cfg.shard_size)
            labels, counts = np.unique(images.labels[rows], return_counts=True)
            per_class = {str(int(c)): int(n) for c, n in zip(labels, counts)}
            splits[split] = SplitRecord(count=len(rows), per_class=per_class, shards=shards)
        records.append(TaskRecord(index=task.index, name=task.name, classes=task.classes, splits=splits))

    train_rows = np.concatenate([t.indices["train"] for t in tasks])
    pixels = images.images[train_rows].astype(np.float64) / 255.0
    _, height, width, channels = images.images.shape
    manifest = Manifest(
        benchmark=cfg.benchmark,
        crdist_version=crdist.__version__,
        source={"description": images.description, "fingerprint": images.fingerprint},
        params=params,
        class_names=images.class_names,
        image=ImageInfo(
            channels=channels,
            height=height,
            width=width,
            mean=[float(m) for m in pixels.mean(axis=(0, 1, 2))],
            std=[float(s) for s in pixels.std(axis=(0, 1, 2))],
        ),
        tasks=records,
    )
    manifest.save(directory)  # last: its presence marks the preparation finished
    return manifest


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
