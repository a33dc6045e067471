"""CIFAR-10 and CIFAR-100, python version: ``cifar-10-batches-py/`` and ``cifar-100-python/``.

Each batch is a Python 2 pickle: ``data`` (uint8 N × 3072: 1024 R, 1024 G, 1024 B, each 32×32
row-major) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from crdist.data.sources.base import Source, SourceError, SourceSample, require_dir
from crdist.data.sources.pickles import load_pickle

_GET = "download and extract the 'python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html"


def load_cifar10(root: Path) -> Source:
    base = require_dir(Path(root) / "cifar-10-batches-py", _GET)
    names = _strings(load_pickle(base / "batches.meta"), "label_names", base / "batches.meta")
    parts = [(base / f"data_batch_{i}", "train") for i in range(1, 6)] + [(base / "test_batch", "test")]
    return _load(parts, "labels", names, "cifar10", "CIFAR-10 (python version)")


def load_cifar100(root: Path) -> Source:
    base = require_dir(Path(root) / "cifar-100-python", _GET)
    names = _strings(load_pickle(base / "meta"), "fine_label_names", base / "meta")
    parts = [(base / "train", "train"), (base / "test", "test")]
    return _load(parts, "fine_labels", names, "cifar100", "CIFAR-100 (python version, fine labels)")


def _load(parts: list[tuple[Path, str]], label_key: str, names: list[str], name: str, description: str) -> Source:
    arrays, samples, digest = [], [], hashlib.sha256()
    for path, split in parts:
        batch = load_pickle(path)
        data, labels = batch.get("data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise SourceError(f"{path}: 'data' is not a uint8 N × 3072 array")
        if not isinstance(labels, list) or len(labels) != len(data):
            raise SourceError(f"{path}: '{label_key}' does not list one label per image")
        offset = sum(len(a) for a in arrays)
        for row, label in enumerate(labels):
            if not 0 <= label < len(names):
                raise SourceError(f"{path}: row {row}: label {label} outside 0..{len(names) - 1}")
            samples.append(SourceSample(f"{path.name}-{row:05d}", int(label), split, f"{path} row {row}",
                                        row=offset + row))
        arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        digest.update(data.tobytes())
    return Source(name, "image", samples, names, f"{name}:{digest.hexdigest()}", description, channels=3,
                  arrays=np.ascontiguousarray(np.concatenate(arrays)), index_files=[path for path, _ in parts])


def _strings(meta: dict, key: str, path: Path) -> list[str]:
    values = meta.get(key)
    if not isinstance(values, list):
        raise SourceError(f"{path}: no '{key}' list")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
