"""TinyImageNet-200: ``tiny-imagenet-200/``.

Labels follow the order of ``wnids.txt`` (not the sorted folder order); the labelled validation
set (``val/val_annotations.txt``) serves as the test split, since ``test/`` has no labels. Images
are 64×64 JPEGs, some grayscale: they are stored as they are and decoded to RGB.
"""

from __future__ import annotations

from pathlib import Path

from crdist.data.sources.base import Source, SourceError, SourceSample, fingerprint_files, require_dir, require_file

_GET = "download tiny-imagenet-200.zip from http://cs231n.stanford.edu/ and extract it"


def load_tinyimagenet(root: Path) -> Source:
    base = require_dir(Path(root) / "tiny-imagenet-200", _GET)
    wnids_path = require_file(base / "wnids.txt", _GET)
    wnids = [line.strip() for line in wnids_path.read_text().splitlines() if line.strip()]
    index = {wnid: i for i, wnid in enumerate(wnids)}
    if len(index) != len(wnids):
        raise SourceError(f"{wnids_path}: lists a wnid twice")
    names = _names(base / "words.txt", wnids)

    samples: list[SourceSample] = []
    for wnid in wnids:
        folder = require_dir(base / "train" / wnid / "images", f"expected train/{wnid}/images/ for each wnid")
        for path in sorted(folder.glob("*.JPEG")):
            samples.append(SourceSample(f"train-{path.stem}", index[wnid], "train", str(path), path=path))

    annotations = require_file(base / "val" / "val_annotations.txt")
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise SourceError(f"{annotations}: line {number}: expected 'file<TAB>wnid<TAB>box…', got {line!r}")
        filename, wnid = fields[0], fields[1]
        if wnid not in index:
            raise SourceError(f"{annotations}: line {number}: wnid {wnid} is not in wnids.txt")
        path = base / "val" / "images" / filename
        samples.append(SourceSample(f"val-{Path(filename).stem}", index[wnid], "test", str(path), path=path))

    fingerprint = fingerprint_files([wnids_path, annotations]) + f":{len(samples)}"
    return Source("tinyimagenet", "image", samples, names, f"tinyimagenet:{fingerprint}",
                  "TinyImageNet-200 (val as the test split)", channels=3,
                  index_files=[wnids_path, annotations])


def _names(words: Path, wnids: list[str]) -> list[str]:
    """First synonym from words.txt per wnid; the wnid itself when words.txt is absent."""
    if not words.is_file():
        return wnids
    lookup = {}
    for line in words.read_text(errors="replace").splitlines():
        wnid, _, text = line.partition("\t")
        lookup[wnid] = text.split(",")[0].strip()
    return [lookup.get(w, w) for w in wnids]
