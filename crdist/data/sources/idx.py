"""Fashion-MNIST (and MNIST) IDX files, gzipped or not.

IDX: big-endian magic 0x00000803 then N, rows, cols for images (uint8); 0x00000801 then N for
labels. Debian's ``dataset-fashion-mnist`` re-compressed the files, so their .gz checksums differ
from upstream: contents are validated instead.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

from crdist.data.sources.base import Source, SourceError, SourceSample

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_GET = "on Debian: apt-get install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist)"


def load_fashion_mnist(root: Path) -> Source:
    root = Path(root)
    parts = [("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    arrays, samples, digest, files = [], [], hashlib.sha256(), []
    for split, images_name, labels_name in parts:
        images_path, labels_path = _find(root, images_name), _find(root, labels_name)
        files += [images_path, labels_path]
        images, labels = read_idx(images_path, 0x803), read_idx(labels_path, 0x801)
        if len(images) != len(labels):
            raise SourceError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
        if labels.size and labels.max() >= len(FASHION_CLASSES):
            row = int(np.argmax(labels >= len(FASHION_CLASSES)))
            raise SourceError(f"{labels_path}: item {row}: label {labels[row]} outside 0..9")
        offset = sum(len(a) for a in arrays)
        samples += [SourceSample(f"{split}-{i:05d}", int(label), split, f"{images_path} item {i}", row=offset + i)
                    for i, label in enumerate(labels)]
        arrays.append(images[..., None])
        digest.update(images.tobytes() + labels.tobytes())
    return Source("fashion-mnist", "image", samples, FASHION_CLASSES, f"fashion-mnist:{digest.hexdigest()}",
                  "Fashion-MNIST (IDX files)", channels=1, arrays=np.concatenate(arrays), index_files=files)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise SourceError(f"{root / name}(.gz): missing; {_GET}")


def read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise SourceError(f"{path}: cannot read ({err})") from None
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != magic:
        raise SourceError(f"{path}: not an IDX file with magic {magic:#010x}")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = data[4 + 4 * ndim :]
    if len(payload) != int(np.prod(dims)):
        raise SourceError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), file holds {len(payload)}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)
