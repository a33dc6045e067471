"""Generic image sources: a folder per split and class, or a CSV listing images and labels. A set
whose images are all grayscale streams one channel; any colour image makes it three.

    imagefolder:  <root>/train/<class>/*.png|jpg   and   <root>/test/<class>/…   (val/ counts as test)
    csv:          a file with a header row ``path,label[,split]``; paths relative to the CSV's folder,
                  labels are class names, split is train (default) or test
"""

from __future__ import annotations

import csv
from pathlib import Path

from crdist.data.sources.base import (
    Source,
    SourceError,
    SourceSample,
    channels_of,
    fingerprint_files,
    image_mode,
    require_dir,
    require_file,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def load_imagefolder(root: Path) -> Source:
    root = require_dir(Path(root))
    train = require_dir(root / "train", "expected <root>/train/<class>/<image>")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise SourceError(f"{train}: no class folders")
    index = {name: i for i, name in enumerate(classes)}
    samples, files = [], []
    for split_dir, split in ((train, "train"), (root / "test", "test"), (root / "val", "test")):
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if class_dir.name not in index:
                raise SourceError(f"{class_dir}: class {class_dir.name!r} has no folder in {train}")
            for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                files.append(path)
                key = f"{split_dir.name}-{class_dir.name}-{path.stem}"
                samples.append(SourceSample(key, index[class_dir.name], split, str(path), path=path))
    return Source("imagefolder", "image", samples, classes, f"imagefolder:{fingerprint_files(files)}",
                  f"image folders under {root}", channels=channels_of(image_mode(p) for p in files))


def load_image_csv(path: Path) -> Source:
    path = require_file(Path(path), "data.root must be the CSV file for the csv benchmark")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"path", "label"} <= set(reader.fieldnames or []):
            raise SourceError(f"{path}: line 1: expected a header with columns path,label[,split]")
        try:
            for row in reader:
                split = (row.get("split") or "train").strip()
                if split not in ("train", "test"):
                    raise SourceError(f"{path}: line {reader.line_num}: split {split!r} is not train or test")
                if not row["path"] or not row["label"]:
                    raise SourceError(f"{path}: line {reader.line_num}: empty path or label")
                rows.append((reader.line_num, (path.parent / row["path"]).resolve(), row["label"].strip(), split))
        except csv.Error as err:
            raise SourceError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None
    classes = sorted({label for _, _, label, _ in rows})
    index = {name: i for i, name in enumerate(classes)}
    samples = [SourceSample(f"{split}-{line:07d}", index[label], split, f"{image} ({path} line {line})", path=image)
               for line, image, label, split in rows]
    return Source("csv", "image", samples, classes, f"csv:{fingerprint_files([path])}", f"images listed in {path}",
                  channels=channels_of(image_mode(s.path) for s in samples), index_files=[path])
