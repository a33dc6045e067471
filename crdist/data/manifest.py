"""The manifest of a prepared stream: what each shard holds, its hash, and how it was made.

``manifest.json`` is written last, so a directory with a manifest is a finished preparation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from crdist.atomic import write_json
from crdist.errors import CrdistError

FORMAT = "crdist-shards/1"
FILENAME = "manifest.json"


class ManifestError(CrdistError, ValueError):
    pass


@dataclass
class ShardRecord:
    path: str  # relative to the manifest's directory
    count: int
    bytes: int
    sha256: str
    mtime_ns: int | None = None  # when it was written; a shard modified since is re-hashed on reuse
    xxh3: str | None = None  # XXH3-128, checked each time the shard is read (older manifests: sha256)

    def matches(self, data: bytes) -> bool:
        """Whether ``data``, the shard's bytes as read, are what was written."""
        if len(data) != self.bytes:
            return False
        if self.xxh3 is not None:
            import xxhash

            return xxhash.xxh3_128_hexdigest(data) == self.xxh3
        import hashlib

        return hashlib.sha256(data).hexdigest() == self.sha256


@dataclass
class SplitRecord:
    count: int
    per_class: dict[str, int]
    shards: list[ShardRecord]


@dataclass
class TaskRecord:
    index: int
    name: str
    classes: list[int]
    splits: dict[str, SplitRecord]


@dataclass
class ImageInfo:
    channels: int
    height: int
    width: int
    # Per channel, in [0, 1], over the train images of every task: one fixed normalisation for the
    # whole stream (as the usual CIFAR constants are), so a checkpoint sees the same inputs on every task.
    mean: list[float]
    std: list[float]
    resize: bool = False  # images are resized to height × width when decoded


@dataclass
class Manifest:
    benchmark: str
    crdist_version: str
    source: dict  # {"description": ..., "fingerprint": ...}
    params: dict  # everything that determines the shards' content
    class_names: list[str]
    image: ImageInfo | None
    tasks: list[TaskRecord]
    modality: str = "image"  # "image" or "text"
    skipped: list[dict] = field(default_factory=list)  # unreadable samples left out (--skip-corrupt)
    format: str = FORMAT
    root: Path = field(default=Path("."), compare=False, repr=False)

    @property
    def in_channels(self) -> int:
        """Image channels a backbone takes; 0 for a text stream."""
        return self.image.channels if self.image is not None else 0

    @property
    def image_size(self) -> int | None:
        """The side of the stream's images when they are square (what a ViT is built for), else None."""
        if self.image is None or self.image.height != self.image.width:
            return None
        return self.image.height

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def task(self, index: int) -> TaskRecord:
        for task in self.tasks:
            if task.index == index:
                return task
        raise ManifestError(f"{self.root / FILENAME}: no task {index} (tasks are 1..{len(self.tasks)})")

    def split(self, task: int, split: str) -> SplitRecord:
        record = self.task(task)
        if split not in record.splits:
            raise ManifestError(f"{self.root / FILENAME}: task {task} has no split {split!r}")
        return record.splits[split]

    def url(self, shard: ShardRecord, template: str | None = None) -> str:
        """Where a reader opens ``shard``: under the manifest's directory, or through ``template``
        (e.g. ``pipe:aws s3 cp s3://bucket/stream/{path} -``) when the shards live elsewhere."""
        if template:
            return template.format(path=shard.path, root=self.root)
        return str(self.root / shard.path)

    def shard_records(self, template: str | None = None) -> dict[str, ShardRecord]:
        """Every shard by the URL a reader opens it at (``url``)."""
        return {self.url(shard, template): shard for task in self.tasks for split in task.splits.values()
                for shard in split.shards}

    def save(self, directory: Path) -> None:
        data = asdict(self)
        data.pop("root")
        write_json(directory / FILENAME, data)

    @classmethod
    def load(cls, directory: str | Path) -> "Manifest":
        directory = Path(directory)
        path = directory / FILENAME
        if not path.is_file():
            raise ManifestError(f"{path}: no manifest (the shards are missing or their preparation did not finish)")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ManifestError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
            tasks = [
                TaskRecord(
                    index=t["index"],
                    name=t["name"],
                    classes=t["classes"],
                    splits={
                        name: SplitRecord(s["count"], s["per_class"], [ShardRecord(**r) for r in s["shards"]])
                        for name, s in t["splits"].items()
                    },
                )
                for t in data["tasks"]
            ]
            image = ImageInfo(**data["image"]) if data.get("image") else None
            return cls(
                benchmark=data["benchmark"],
                crdist_version=data["crdist_version"],
                source=data["source"],
                params=data["params"],
                class_names=data["class_names"],
                image=image,
                tasks=tasks,
                modality=data.get("modality", "image"),
                skipped=data.get("skipped", []),
                format=data["format"],
                root=directory.resolve(),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ManifestError(f"{path}: malformed manifest ({type(err).__name__}: {err})") from None
