"""A local Hugging Face dataset, read through `datasets`, always offline.

    disk:         what ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` wrote
    parquet, csv, json:  data files (``data.hf.data_files`` maps split → files or globs; without
                  it, what `datasets` finds under data.root, or data.root itself as the train split)
    imagefolder:  <root>/<split>/<class>/<image> (and its metadata files), as `datasets` reads them

The input column is an image (an Image feature) or a text (a string column); the label column a
ClassLabel (its names are the classes, its indices the labels), integers or strings (their sorted
distinct values are the classes). Images go into the shards as they are stored when they are PNG
or JPEG, and re-encoded losslessly as PNG otherwise; a dataset whose images are all grayscale
stays one channel. The workers never read `datasets`: they stream the shards written from it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from crdist.data.config import HFOptions
from crdist.data.sources.base import Source, SourceError, SourceSample, channels_of, image_mode

FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LABEL_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool", "string",
                "large_string")


def load_hf(root: Path, options: HFOptions, skip_corrupt: bool) -> tuple[Source, list[str] | None]:
    """The dataset as a Source, and the task order of its domains (None: tasks are classes)."""
    root = _local(root)
    cache = Path(tempfile.mkdtemp(prefix="crdist-hf-"))  # `datasets`' arrow cache, removed by cleanup
    try:
        fmt = options.format if options.format != "auto" else _detect(root)
        splits, files = _open(root, fmt, options, cache)
        return _read(root, fmt, splits, files, options, skip_corrupt, cache)
    except BaseException:
        shutil.rmtree(cache, ignore_errors=True)
        raise


def _datasets():
    """`datasets`, never touching the network: hub ids are refused before it is called at all,
    and the offline switches keep it from looking up anything while it reads local files."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    import datasets

    datasets.config.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()
    # Its own errors come back to crdist as exceptions and are reported once, naming the file.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    return datasets


def _local(root: Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise SourceError(f"data.root {root}: no such file or directory. The hf benchmark reads local datasets only "
                          f"(a save_to_disk directory, parquet / CSV / JSON files, or an image folder), offline; it "
                          f"never downloads a hub dataset: save it with save_to_disk where it can be fetched, and "
                          f"copy that directory here")
    return path.resolve()


def _detect(root: Path) -> str:
    if root.is_file():
        fmt = FILE_FORMATS.get(root.suffix.lower())
        if fmt is None:
            raise SourceError(f"{root}: not a parquet, CSV or JSON file; set data.hf.format")
        return fmt
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return "disk"
    suffixes = {p.suffix.lower() for p in root.rglob("*") if p.is_file()}
    found = [FILE_FORMATS[s] for s in sorted(suffixes) if s in FILE_FORMATS]
    if suffixes & IMAGE_SUFFIXES:
        return "imagefolder"
    if len(set(found)) == 1:
        return found[0]
    raise SourceError(f"{root}: cannot tell which dataset format this is (no save_to_disk files, no images, "
                      f"{'data files of several kinds' if found else 'no parquet, CSV or JSON files'}); set "
                      f"data.hf.format (disk, parquet, csv, json or imagefolder)")


def _open(root: Path, fmt: str, options: HFOptions, cache: Path) -> tuple[dict, list[Path]]:
    """Split name → Dataset, and the raw files they were read from."""
    datasets = _datasets()
    every_file = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    try:
        if fmt == "disk":
            if options.data_files is not None:
                raise SourceError("data.hf.data_files names files for parquet, csv, json and imagefolder; a "
                                  "save_to_disk directory (data.hf.format: disk) has its own layout: leave it unset")
            loaded = datasets.load_from_disk(str(root), keep_in_memory=False)
            if isinstance(loaded, datasets.Dataset):
                loaded = {options.train_split: loaded}
            return dict(loaded), every_file
        kwargs = {"cache_dir": str(cache)}
        if options.data_files is not None:
            data_files = {split: _glob(root, patterns, split) for split, patterns in options.data_files.items()}
            files = sorted({f for listed in data_files.values() for f in listed})
            kwargs["data_files"] = {split: [str(f) for f in listed] for split, listed in data_files.items()}
        elif root.is_file():
            files = [root]
            kwargs["data_files"] = {options.train_split: [str(root)]}
        else:
            files = every_file
            kwargs["data_dir"] = str(root)
        return dict(datasets.load_dataset(fmt, **kwargs)), files
    except SourceError:
        raise
    except Exception as err:  # `datasets` raises many types for files it cannot read
        raise SourceError(f"{root}: `datasets` cannot read it as {fmt} ({type(err).__name__}: {err})") from None


def _glob(root: Path, patterns: list[str], split: str) -> list[Path]:
    found = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(str(root / pattern), recursive=True) if Path(p).is_file())
        if not matches:
            raise SourceError(f"data.hf.data_files.{split}: {pattern!r} matches no file under {root}")
        found += matches
    return list(dict.fromkeys(found))


def _read(root: Path, fmt: str, splits: dict, files: list[Path], options: HFOptions, skip_corrupt: bool,
          cache: Path) -> tuple[Source, list[str] | None]:
    datasets = _datasets()
    chosen = _choose_splits(root, splits, options)
    first = next(iter(chosen.values()))
    input_column = options.input or _default_input(root, first, datasets)
    for key, column in (("input", input_column), ("label", options.label), ("domain", options.domain)):
        if column is None:
            continue
        for name, table in chosen.items():
            if column not in table.column_names:
                hint = ("; an image folder gets a label column from its class folders only when there are at "
                        "least two" if fmt == "imagefolder" and key == "label" else "")
                raise SourceError(f"data.hf.{key}: {root} has no column {column!r} in split {name!r}; its columns: "
                                  f"{', '.join(table.column_names)}{hint}")
    feature = first.features[input_column]
    if isinstance(feature, datasets.Image):
        modality = "image"
        chosen = {split: table.cast_column(input_column, datasets.Image(decode=False))
                  for split, table in chosen.items()}
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        modality = "text"
    else:
        raise SourceError(f"data.hf.input: column {input_column!r} of {root} holds {_describe(feature)}, neither an "
                          f"image (an Image feature) nor a text (strings)")
    class_names, to_index = _classes(root, chosen, options.label, datasets)

    samples, skipped, domain_values = [], [], set()
    for split, table in chosen.items():
        name = options.train_split if split == "train" else _test_name(splits, options)
        labels = table[options.label]
        domains = table[options.domain] if options.domain else None
        texts = table[input_column] if modality == "text" else None
        for row, label in enumerate(labels):
            origin = f"{root} [{name} row {row}]"
            problem = None
            if label is None or label not in to_index:
                problem = "no label" if label is None or label == -1 else f"label {label!r} is not a class"
            elif texts is not None and texts[row] is None:
                problem = "no text"
            elif domains is not None and domains[row] is None:
                problem = f"no value in the domain column {options.domain!r}"
            if problem:
                if not skip_corrupt:
                    raise SourceError(f"{origin}: {problem} (--skip-corrupt leaves such rows out)")
                skipped.append({"sample": origin, "reason": problem})
                continue
            if domains is not None:
                domain_values.add(domains[row])
            samples.append(SourceSample(f"{split}-{row:08d}", to_index[label], split, origin,
                                        domain=str(domains[row]) if domains is not None else "", row=row,
                                        text=texts[row] if texts is not None else None))

    image_bytes = _ImageBytes(chosen, input_column) if modality == "image" else None
    channels = 3
    if image_bytes is not None:
        modes = []
        for sample in samples:
            try:
                modes.append(image_mode(image_bytes(sample)))
            except SourceError:
                modes.append(None)  # no image: the shard writer names it (or skips it)
        channels = channels_of(modes)
    digest = hashlib.sha256()
    for split, table in sorted(chosen.items()):
        digest.update(f"{split}:{table._fingerprint}:{table.num_rows}\n".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root) if path != root else path.name}:{stat.st_size}\n".encode())
    used = {_split_name(split, splits, options) for split in chosen}
    unused = sorted(set(splits) - used)
    source = Source(
        "hf", modality, samples, class_names, f"hf:{digest.hexdigest()}",
        f"Hugging Face dataset ({fmt}) at {root}, splits {', '.join(sorted(used))}"
        + (f" (not used: {', '.join(unused)})" if unused else ""),
        channels=channels, skipped=skipped, index_files=files, image_bytes=image_bytes,
        cleanup=lambda: shutil.rmtree(cache, ignore_errors=True),
    )
    return source, _domain_order(root, domain_values, options)


def _choose_splits(root: Path, splits: dict, options: HFOptions) -> dict:
    """crdist's train and test splits → the dataset's splits they are read from."""
    if options.train_split not in splits:
        raise SourceError(f"data.hf.train_split: {root} has no split {options.train_split!r}; its splits: "
                          f"{', '.join(splits)}")
    chosen = {"train": splits[options.train_split]}
    test = _test_name(splits, options)
    if options.test_split is not None and test not in splits:
        raise SourceError(f"data.hf.test_split: {root} has no split {test!r}; its splits: {', '.join(splits)}")
    if test is not None and test in splits:
        if test == options.train_split:
            raise SourceError(f"data.hf.test_split: {test!r} is the train split too")
        chosen["test"] = splits[test]
    return chosen


def _test_name(splits: dict, options: HFOptions) -> str | None:
    if options.test_split is not None:
        return options.test_split
    return "test" if "test" in splits and options.train_split != "test" else None


def _split_name(split: str, splits: dict, options: HFOptions) -> str:
    return options.train_split if split == "train" else _test_name(splits, options)


def _default_input(root: Path, table, datasets) -> str:
    images = [name for name, f in table.features.items() if isinstance(f, datasets.Image)]
    if len(images) == 1:
        return images[0]
    if len(images) > 1:
        raise SourceError(f"{root} has several image columns ({', '.join(images)}); name one in data.hf.input")
    if "text" in table.column_names:
        return "text"
    raise SourceError(f"{root}: no image column and no column named 'text'; name the input column in data.hf.input "
                      f"(its columns: {', '.join(table.column_names)})")


def _classes(root: Path, chosen: dict, column: str, datasets) -> tuple[list[str], dict]:
    """The class names, and each label value → its class index."""
    feature = next(iter(chosen.values())).features[column]
    if isinstance(feature, datasets.ClassLabel):
        for split, table in chosen.items():
            if table.features[column] != feature:
                raise SourceError(f"data.hf.label: column {column!r} has other class names in split {split!r} than "
                                  f"in the train split")
        return list(feature.names), {i: i for i in range(len(feature.names))}
    if not (isinstance(feature, datasets.Value) and feature.dtype in LABEL_DTYPES):
        raise SourceError(f"data.hf.label: column {column!r} of {root} holds {_describe(feature)}, not class labels "
                          f"(a ClassLabel, integers or strings)")
    values = sorted({v for table in chosen.values() for v in table[column] if v is not None})
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def _describe(feature) -> str:
    dtype = getattr(feature, "dtype", None)
    return f"{type(feature).__name__}({dtype})" if dtype else type(feature).__name__


def _domain_order(root: Path, values: set, options: HFOptions) -> list[str] | None:
    """The tasks' domains: as data.hf.domains lists them, else the column's values sorted (as
    numbers when they are numbers: 2, 10, not "10", "2")."""
    if options.domain is None:
        return None
    found = [str(v) for v in sorted(values)]
    if options.domains is None:
        return found
    asked = [str(d) for d in options.domains]
    unknown = [d for d in asked if d not in found]
    if unknown:
        raise SourceError(f"data.hf.domains names {', '.join(map(repr, unknown))}, which column {options.domain!r} "
                          f"of {root} does not hold; its values: {', '.join(found)}")
    return asked


class _ImageBytes:
    """A sample → its encoded image, from the table's bytes or the file it points to."""

    def __init__(self, tables: dict, column: str):
        # Only the image column: a row read from the whole table would decode every column.
        self.tables = {split: table.select_columns([column]) for split, table in tables.items()}
        self.column = column

    def __call__(self, sample: SourceSample) -> bytes:
        cell = self.tables[sample.split][sample.row][self.column]
        if cell is None:
            raise SourceError(f"{sample.origin}: no image")
        if cell.get("bytes") is not None:
            return cell["bytes"]
        if cell.get("path"):
            try:
                return Path(cell["path"]).read_bytes()
            except OSError as err:
                raise SourceError(f"{sample.origin}: cannot read {cell['path']} ({err.strerror or err})") from None
        raise SourceError(f"{sample.origin}: no image")
