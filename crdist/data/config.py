from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from crdist.config import require


@dataclass(frozen=True)
class FMoWOptions:
    by: Literal["region", "year"] = "region"
    # Regions in task order; null = the paper's: the regions WILDS numbers 1, 3, 0, 4, 2, 5
    # (WILDS numbers regions by first appearance in rgb_metadata.csv).
    regions: list[str] | None = None
    # by: year: task boundaries; [2013, 2015, 2017] gives ≤2012, 2013–2014, 2015–2016, ≥2017.
    year_bounds: list[int] = field(default_factory=lambda: [2013, 2015, 2017])


@dataclass(frozen=True)
class TextOptions:
    order: Literal[1, 2, 3, 4] = 1  # text-5: the MbPA++ dataset orders
    train_per_task: int = 115_000  # text-5: train rows sampled per dataset
    test_per_task: int = 7_600
    domains: list[str] | None = None  # sentiment-domains: task order; null = all found


@dataclass(frozen=True)
class HFOptions:
    """benchmark: hf — a local Hugging Face dataset at data.root, read through `datasets`, offline."""

    # auto: a save_to_disk directory, an image folder (train/<class>/…), or parquet / CSV / JSON
    # files, told apart by what data.root holds.
    format: Literal["auto", "disk", "parquet", "csv", "json", "imagefolder"] = "auto"
    # parquet / csv / json / imagefolder: split name → file name(s) or glob(s), relative to
    # data.root; null = what `datasets` finds there (a file given as data.root is the train split).
    data_files: dict[str, list[str]] | None = None
    # The column holding the input: an image (Image feature) or a text (string). null = the one
    # image column, else a column named "text".
    input: str | None = None
    # The label column: a ClassLabel (its names are the classes), integers or strings (the sorted
    # distinct values are the classes).
    label: str = "label"
    train_split: str = "train"
    # null = "test" when the dataset has it, else a test_fraction of each class is held out.
    test_split: str | None = None
    # Domain-incremental: a column whose values are the tasks, in the order of ``domains``
    # (null = sorted). Without it, tasks are classes (classes_per_task or task_classes).
    domain: str | None = None
    domains: list[str | int] | None = None


@dataclass(frozen=True)
class DataConfig:
    benchmark: str = "seq-digits"
    # Where the raw dataset lives (a folder; the CSV file for `csv`). seq-digits needs none.
    root: str | None = None
    # Directory of prepared shards plus manifest.json; prepared on first use, reused after.
    # null = shards/<benchmark>-<hash of the options below>, so changing an option never
    # collides with an earlier preparation.
    shards: str | None = None
    # How workers open a shard: a template over the shard's path in the manifest, e.g.
    # "pipe:aws s3 cp s3://bucket/seq-cifar10/{path} -"; null = read data.shards directly.
    stream_url: str | None = None
    # Tasks of the stream to use (the first N); null = all.
    tasks: int | None = None
    # Class-incremental streams: classes per task (null = the benchmark's default) and their order.
    classes_per_task: int | None = None
    class_order: list[int] | None = None
    # imagefolder / csv: the classes of each task, by name (overrides classes_per_task).
    task_classes: list[list[str]] | None = None
    # Share of each class held out as the test split (sources without an official test split).
    test_fraction: float = 0.3
    # Size per class of the fixed adaptation subset (drawn from the train split, seeded).
    adapt_per_class: int = 30
    # Keep a seeded subset of at most this many rows per class of each task's train / test split
    # (a run sized to a small machine); null = every row.
    train_per_class: int | None = None
    test_per_class: int | None = None
    # Seeds the test/adaptation split, the text-5 sample and the order of samples in the shards.
    seed: int = 0
    # Samples per tar shard; null = about 1/8 of a split, at most 1000.
    shard_size: int | None = None
    # Resize images to this square size when decoding (needed when the source's sizes differ).
    image_size: int | None = None
    # Training augmentation (crdist/data/augment.py): none | crop_flip | paper. Seeded per sample and
    # epoch; evaluation never augments. Not part of the shards: changing it reuses them.
    augment: Literal["none", "crop_flip", "paper"] = "none"
    # Skip unreadable samples (listed in the manifest) instead of stopping at the first one.
    skip_corrupt: bool = False
    fmow: FMoWOptions = field(default_factory=FMoWOptions)
    text: TextOptions = field(default_factory=TextOptions)
    hf: HFOptions = field(default_factory=HFOptions)

    def content_params(self) -> dict:
        """Every option that determines what the shards contain (not where they are)."""
        params = asdict(self)
        for key in ("shards", "root", "stream_url", "augment"):
            params.pop(key)
        for key in ("train_per_class", "test_per_class"):  # added later: unset, they leave earlier hashes alone
            if params[key] is None:
                params.pop(key)
        if self.benchmark != "hf":  # added later too; only the hf benchmark reads it
            params.pop("hf")
        return params

    def shards_dir(self) -> Path:
        if self.shards is not None:
            return Path(self.shards)
        digest = hashlib.sha256(json.dumps(self.content_params(), sort_keys=True).encode()).hexdigest()[:8]
        return Path("shards") / f"{self.benchmark}-{digest}"

    def validate(self) -> None:
        from crdist.data.benchmarks import BENCHMARKS

        require(self.benchmark in BENCHMARKS, "benchmark", BENCHMARKS.unknown_message(self.benchmark))
        require(self.tasks is None or self.tasks >= 1, "tasks", f"must be at least 1 (got {self.tasks})")
        require(self.classes_per_task is None or self.classes_per_task >= 1, "classes_per_task",
                f"must be at least 1 (got {self.classes_per_task})")
        if self.class_order is not None:
            require(len(set(self.class_order)) == len(self.class_order), "class_order", "lists a class more than once")
        require(0.0 < self.test_fraction < 1.0, "test_fraction", f"must be in (0, 1) (got {self.test_fraction})")
        require(self.adapt_per_class >= 2, "adapt_per_class", f"must be at least 2 (got {self.adapt_per_class})")
        for key in ("train_per_class", "test_per_class"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, f"must be at least 1 or null (got {value})")
        require(self.train_per_class is None or self.train_per_class >= self.adapt_per_class, "train_per_class",
                f"must be at least adapt_per_class={self.adapt_per_class}, which is drawn from it "
                f"(got {self.train_per_class})")
        require(self.shard_size is None or self.shard_size >= 1, "shard_size",
                f"must be at least 1 (got {self.shard_size})")
        require(self.image_size is None or self.image_size >= 1, "image_size",
                f"must be at least 1 (got {self.image_size})")
        require(self.hf.domains is None or self.hf.domain is not None, "hf.domains",
                "orders the values of the hf.domain column; set hf.domain too")
        require(self.stream_url is None or "{path}" in self.stream_url, "stream_url",
                "must contain {path}, where each shard's path in the manifest goes")
