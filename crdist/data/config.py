from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from crdist.config import require


@dataclass(frozen=True)
class FMoWOptions:
    """benchmark: fmow — how the FMoW images are split into tasks."""

    by: Literal["region", "year"] = "region"
    """What a task is: the images of one region (6 tasks) or of one span of years (year_bounds)."""
    regions: list[str] | None = None
    """by: region: the regions in task order; null = the paper's: the regions WILDS numbers 1, 3, 0, 4,
    2, 5 (WILDS numbers regions by first appearance in rgb_metadata.csv)."""
    year_bounds: list[int] = field(default_factory=lambda: [2013, 2015, 2017])
    """by: year: task boundaries; [2013, 2015, 2017] gives ≤2012, 2013–2014, 2015–2016, ≥2017."""


@dataclass(frozen=True)
class TextOptions:
    """benchmark: text-5 and sentiment-domains — which texts make the tasks."""

    order: Literal[1, 2, 3, 4] = 1
    """text-5: which of the MbPA++ dataset orders the tasks follow."""
    train_per_task: int = 115_000
    """text-5: train rows sampled per dataset."""
    test_per_task: int = 7_600
    """text-5: test rows sampled per dataset."""
    domains: list[str] | None = None
    """sentiment-domains: the domains in task order; null = every domain found, in sorted order."""


@dataclass(frozen=True)
class HFOptions:
    """benchmark: hf — a local Hugging Face dataset at data.root, read through `datasets`, offline."""

    format: Literal["auto", "disk", "parquet", "csv", "json", "imagefolder"] = "auto"
    """How data.root is stored; auto: a save_to_disk directory, an image folder (train/<class>/…), or
    parquet / CSV / JSON files, told apart by what data.root holds."""
    data_files: dict[str, list[str]] | None = None
    """parquet / csv / json / imagefolder: split name → file name(s) or glob(s), relative to
    data.root; null = what `datasets` finds there (a file given as data.root is the train split)."""
    input: str | None = None
    """The column holding the input: an image (Image feature) or a text (string). null = the one
    image column, else a column named "text"."""
    label: str = "label"
    """The label column: a ClassLabel (its names are the classes), integers or strings (the sorted
    distinct values are the classes)."""
    train_split: str = "train"
    """The dataset's split the tasks' train splits come from."""
    test_split: str | None = None
    """The dataset's split the tasks' test splits come from; null = "test" when the dataset has it,
    else a test_fraction of each class is held out."""
    domain: str | None = None
    """Domain-incremental: a column whose values are the tasks, in the order of hf.domains. Without
    it, tasks are classes (classes_per_task or task_classes)."""
    domains: list[str | int] | None = None
    """The values of the hf.domain column in task order; null = sorted."""


@dataclass(frozen=True)
class DataConfig:
    """The task stream: which dataset, split into which tasks, prepared as WebDataset shards."""

    benchmark: str = "seq-digits"
    """The dataset and how it splits into tasks, by its name in crdist/data/benchmarks/, e.g.
    seq-digits, seq-cifar10, fmow, text-5, imagefolder, csv or hf (a local Hugging Face dataset);
    an unknown name is refused with the list."""
    root: str | None = None
    """Where the raw dataset lives (a folder; the CSV file for `csv`). seq-digits needs none."""
    shards: str | None = None
    """Directory of prepared shards plus manifest.json; prepared on first use, reused after.
    null = shards/<benchmark>-<hash of the options that shape the shards>, so changing an option
    never collides with an earlier preparation."""
    stream_url: str | None = None
    """How workers open a shard: a template over the shard's path in the manifest, e.g.
    "pipe:aws s3 cp s3://bucket/seq-cifar10/{path} -"; null = read data.shards directly."""
    tasks: int | None = None
    """Tasks of the stream to use (the first N); null = all."""
    classes_per_task: int | None = None
    """Class-incremental streams: classes per task; null = the benchmark's default."""
    class_order: list[int] | None = None
    """Class-incremental streams: the order classes are dealt to tasks; null = label order."""
    task_classes: list[list[str]] | None = None
    """imagefolder / csv: the classes of each task, by name (overrides classes_per_task)."""
    test_fraction: float = 0.3
    """Share of each class held out as the test split (sources without an official test split)."""
    adapt_per_class: int = 30
    """Size per class of the fixed adaptation subset (drawn from the train split, seeded)."""
    train_per_class: int | None = None
    """Keep a seeded subset of at most this many rows per class of each task's train split (a run
    sized to a small machine); null = every row."""
    test_per_class: int | None = None
    """As train_per_class, for each task's test split."""
    seed: int = 0
    """Seeds the test/adaptation split, the text-5 sample and the order of samples in the shards."""
    shard_size: int | None = None
    """Samples per tar shard; null = about 1/8 of a split, at most 1000."""
    image_size: int | None = None
    """Resize images to this square size when decoding (needed when the source's sizes differ);
    null = as stored."""
    augment: Literal["none", "crop_flip", "paper"] = "none"
    """Training augmentation (crdist/data/augment.py). Seeded per sample and epoch; evaluation never
    augments. Not part of the shards: changing it reuses them."""
    skip_corrupt: bool = False
    """Skip unreadable samples (listed in the manifest) instead of stopping at the first one."""
    # Each benchmark's own options; their classes' docstrings document them.
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
