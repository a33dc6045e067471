"""``crdist bench data``: how fast one rank's WebDataset stream delivers training batches, against a
plain loader of the same samples as image files, and against what a training step consumes; and
where a sample's time goes.

- ``stream``: ``RankStream`` (crdist's training input: tar shards checked against their digests,
  shuffle buffer, decode, collate, rebatch) for task 1's train split on one rank, with each
  loader-worker count (``--loader-workers``, default 0, 1, 2), decoding every image every epoch
  (``train.decoded_cache_mb=0``);
- ``stream+cache``: the same, keeping decoded shards across epochs within
  ``train.decoded_cache_mb`` per loading process (crdist/data/cache.py), as training does by default;
- ``raw files``: a plain loader, what a hand-written script over an image folder does: the same
  samples as one image file each (``<class>/<key>.<png|jpg>``, the bytes the shards hold), a
  map-style ``Dataset`` decoding them with the same decoder, shuffled, through a ``DataLoader`` with
  torch's default collate, the same batch size and the same loader workers (kept across epochs, as
  the stream keeps its own);
- ``training``: samples/s of one rank's forward, backward and AdamW step on batches already in
  memory (no process group): the rate the stream must outrun.

The stream and the plain loader are measured in interleaved rounds (``--rounds``, default 3), each
round every loader-worker count of both, each measurement in fresh loader processes over whole
epochs for at least MIN_SECONDS; the table gives each one's median and range. (On a 2-core machine
two measurements of one loader minutes apart differ by 20 % and more; one measurement of each
would compare the machine's moods.)

``--folder DIR`` runs it on an image folder of your own (``DIR/train/<class>/*.jpg``, as the
``imagefolder`` benchmark reads it, all classes in one task), prepared into shards first;
``--image-size N`` resizes its images to N × N.

Targets: stream ≥ raw files at every loader-worker count, both decoding every epoch (medians);
stream ≥ 3 × training, and ≥ 1.5 × raw files (the best count of each).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

LOADER_WORKERS = (0, 1, 2)
TARGET_VS_TRAINING = 3.0  # the best stream over one rank's training step
TARGET_VS_RAW = 1.5  # the best stream over the best raw-file loader, both decoding every epoch
TARGET_VS_RAW_EACH = 1.0  # the stream over the raw-file loader at each loader-worker count (medians)
MIN_SECONDS = 2.0  # each measurement repeats whole epochs until it has run this long


def bench_data(config: Path, overrides: list[str], json_out: Path | None, folder: Path | None = None,
               image_size: int | None = None, loader_workers=LOADER_WORKERS, rounds: int = 3,
               shards: Path | None = None) -> int:
    from crdist.data.prepare import prepare
    from crdist.data.samples import make_decoder
    from crdist.study import load_study

    with tempfile.TemporaryDirectory(prefix="crdist-bench-data-") as tmp:
        overrides = [*_folder_overrides(folder, shards or Path(tmp) / "shards"), *overrides] if folder else list(overrides)
        if image_size:
            overrides.append(f"data.image_size={image_size}")
        study = load_study(config, overrides)
        manifest = prepare(study.data, log=lambda line: print(f"data   {line}"))
        if manifest.modality != "image":
            raise SystemExit("crdist bench data: measures image streams; this study's data is "
                             f"{manifest.modality}")
        batch = study.train.batch_size
        decode = make_decoder(manifest, study.model)
        split = manifest.split(1, "train")
        print(f"bench data: task 1 train split of {manifest.root} ({split.count} samples, "
              f"{manifest.image_size or '?'} px), batch {batch}, one rank; {rounds} round(s) of each loader, "
              f"each over ≥ {MIN_SECONDS:.0f} s of whole epochs")
        files = _write_image_folder(manifest, Path(tmp) / "files")
        measured: dict[tuple[str, int], list[float]] = {}
        for round_number in range(1, rounds + 1):
            for workers in loader_workers:
                stream = _stream(manifest, study, decode, workers, 0)  # one per job, as a training worker holds it
                measured.setdefault(("stream", workers), []).append(_rate(stream.batches))
                del stream  # its loader processes end with it
                loader = _raw_files(files, decode, batch, workers)  # its workers persist, as the stream's do
                measured.setdefault(("raw files", workers), []).append(_rate(lambda epoch: loader))
                del loader
                print(f"  round {round_number}, {workers} loader workers: stream "
                      f"{measured[('stream', workers)][-1]:7.0f}, raw files {measured[('raw files', workers)][-1]:7.0f} "
                      "samples/s", flush=True)
        cache_bytes = int(study.train.decoded_cache_mb * 2**20)
        if cache_bytes:
            for workers in loader_workers:
                stream = _stream(manifest, study, decode, workers, cache_bytes)
                measured[("stream+cache", workers)] = [_rate(stream.batches)]
                del stream
        rows = [{"loader": loader, "loader_workers": workers, "samples_per_second": statistics.median(rates),
                 "rounds": rates} for (loader, workers), rates in measured.items()]
        rows.sort(key=lambda r: (LOADERS.index(r["loader"]), r["loader_workers"]))
        training = _training_rate(study, manifest, decode)
        rows.append({"loader": "training step", "loader_workers": None, "samples_per_second": training})
        _print_table(rows)
        breakdown = _breakdown(manifest, study, decode)
        _print_breakdown(breakdown)
        if json_out:
            json_out.write_text(json.dumps({"batch_size": batch, "shards": str(manifest.root),
                                            "image_size": manifest.image_size, "rows": rows,
                                            "breakdown_us_per_sample": breakdown}, indent=1))
            print(f"wrote {json_out}")
    return 0


LOADERS = ("stream", "stream+cache", "raw files")
STREAMS = ("stream", "stream+cache")


def _folder_overrides(folder: Path, shards: Path) -> list[str]:
    """An image folder as the imagefolder benchmark reads it, every class in task 1."""
    train = folder / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
    if len(classes) < 2:
        raise SystemExit(f"crdist bench data: --folder {folder}: expected {train}/<class>/ folders of images "
                         f"(at least 2 classes), found {len(classes)}")
    return ["data.benchmark=imagefolder", f"data.root={folder}", f"data.shards={shards}", "data.tasks=1",
            f"data.classes_per_task={len(classes)}"]


def _print_table(rows: list[dict]) -> None:
    raw = {r["loader_workers"]: r["samples_per_second"] for r in rows if r["loader"] == "raw files"}
    best = {r["loader"]: max(x["samples_per_second"] for x in rows if x["loader"] == r["loader"]) for r in rows}
    training = best["training step"]
    print()
    print("loader         workers  samples/s (median; range over rounds)  vs training step (target ≥ 3)  "
          "vs raw files, same workers (target ≥ 1)")
    for r in rows:
        workers = "-" if r["loader_workers"] is None else r["loader_workers"]
        spread = f"{min(r['rounds']):.0f}–{max(r['rounds']):.0f}" if len(r.get("rounds", [])) > 1 else ""
        vs_raw = f"{r['samples_per_second'] / raw[r['loader_workers']]:.2f}" if r["loader"] in STREAMS else ""
        vs_training = f"{r['samples_per_second'] / training:.2f}" if r["loader"] != "training step" else ""
        print(f"{r['loader']:<13}  {workers:>7}  {r['samples_per_second']:9.0f}  {spread:>27}  {vs_training:>29}  "
              f"{vs_raw:>38}")
    # The verdicts, each on its target's measure. Against raw files only the stream that decodes
    # every epoch compares like with like: the raw-file loader decodes every epoch too.
    each = {r["loader_workers"]: r["samples_per_second"] / raw[r["loader_workers"]] for r in rows if r["loader"] == "stream"}
    print(f"target stream ≥ raw files at every loader-worker count, both decoding every epoch: "
          f"{'met' if min(each.values()) >= TARGET_VS_RAW_EACH else 'not met'} "
          f"({', '.join(f'{w}: {ratio:.2f}' for w, ratio in each.items())})")
    vs_training, vs_raw = best["stream"] / training, best["stream"] / best["raw files"]
    print(f"target stream ≥ {TARGET_VS_TRAINING:g} × training step: {'met' if vs_training >= TARGET_VS_TRAINING else 'not met'}"
          f" ({vs_training:.2f})")
    print(f"target stream ≥ {TARGET_VS_RAW:g} × raw files (best counts), both decoding every epoch: "
          f"{'met' if vs_raw >= TARGET_VS_RAW else 'not met'} ({vs_raw:.2f}); stream+cache against raw files "
          "is not like for like (it keeps decoded shards, the raw-file loader decodes again)")


def _rate(epoch_batches) -> float:
    """Samples/s over whole epochs, repeated until MIN_SECONDS have passed (the first epoch's
    loader start-up included, as a training epoch pays it)."""
    samples, epoch, started = 0, 0, time.perf_counter()
    while True:
        for _, labels in epoch_batches(epoch):
            samples += len(labels)
        epoch += 1
        elapsed = time.perf_counter() - started
        if elapsed >= MIN_SECONDS:
            return samples / elapsed


def _breakdown(manifest, study, decode) -> dict:
    """Microseconds per sample of each part of the stream's work, each timed alone in this process
    over task 1's train split, in the stream's order: read (the shards' bytes, their digests, the
    tar members grouped into samples), decode (image bytes → 8-bit pixels), collate (the pixels
    into their batch), hand-over (a batch of pixels crossing from one loader worker to the
    trainer's process, through a DataLoader as the stream's), and transform (the batch's pixels →
    normalised floats, in the trainer's process)."""
    from crdist.data.stream import _name_the_shard
    from crdist.data.tarstream import tar_to_samples

    urls = [manifest.url(s, study.data.stream_url) for s in manifest.split(1, "train").shards]
    started = time.perf_counter()
    samples = list(tar_to_samples(handler=_name_the_shard, records=manifest.shard_records(study.data.stream_url))(
        {"url": url} for url in urls))
    read = time.perf_counter() - started
    started = time.perf_counter()
    decoded = [{"pixels": decode.decode_pixels(sample), "cls": sample["cls"]} for sample in samples]
    decoding = time.perf_counter() - started
    batch = study.train.batch_size
    groups = [decoded[i:i + batch] for i in range(0, len(decoded) - batch + 1, batch)]
    started = time.perf_counter()
    batches = [decode.batch_pixels(group) for group in groups]
    collating = time.perf_counter() - started
    started = time.perf_counter()
    for pixels, _ in batches:
        decode.normalize_batch(pixels)
    transform = time.perf_counter() - started
    n, batched = len(samples), len(groups) * batch
    return {"read": 1e6 * read / n, "decode": 1e6 * decoding / n, "collate": 1e6 * collating / batched,
            "hand-over": _hand_over_us(decode, groups[0]), "transform": 1e6 * transform / batched}


class _Repeat(torch.utils.data.IterableDataset):
    """One batch's samples collated ``times`` times in the loader worker, as the stream collates
    them there (into shared memory): what crosses, and its making, timed apart below."""

    def __init__(self, decode, samples: list[dict], times: int):
        self.decode, self.samples, self.times = decode, samples, times

    def __iter__(self):
        for _ in range(self.times):
            yield self.decode.batch_pixels(self.samples)


def _hand_over_us(decode, samples: list[dict], times: int = 50) -> float:
    """Per sample: a batch's trip from one loader worker to this process, less its making."""
    loader = torch.utils.data.DataLoader(_Repeat(decode, samples, times), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork")
    iterator = iter(loader)
    next(iterator)  # the worker's start
    started = time.perf_counter()
    for _ in iterator:
        pass
    crossing = (time.perf_counter() - started) / (times - 1)
    started = time.perf_counter()
    for _ in range(10):
        decode.batch_pixels(samples)
    making = (time.perf_counter() - started) / 10
    return 1e6 * max(crossing - making, 0.0) / len(samples)


def _print_breakdown(parts: dict) -> None:
    total = sum(parts.values())
    print()
    print("where a sample's time goes (µs per sample, each part timed alone, in one process):")
    for part, us in parts.items():
        print(f"  {part:<10} {us:9.1f}  {us / total:6.1%}")
    print(f"  {'total':<10} {total:9.1f}  (one process doing all of it: {1e6 / total:.0f} samples/s)")


def _stream(manifest, study, decode, workers: int, cache_bytes: int):
    from crdist.data.stream import RankStream, StreamSpec

    spec = StreamSpec(task=1, split="train", rank=0, world=1, batch_size=study.train.batch_size,
                      loader_workers=workers, shuffle_buffer=study.train.shuffle_buffer, seed=study.seed,
                      order=study.train.data_order, cache_bytes=cache_bytes)
    return RankStream(manifest, spec, decode, study.data.stream_url)


def _write_image_folder(manifest, directory: Path) -> list[tuple[str, int]]:
    """Task 1's train samples as ``<class>/<key>.png`` files: (path, label) per sample."""
    import webdataset as wds

    files = []
    for shard in manifest.split(1, "train").shards:
        for sample in wds.WebDataset(manifest.url(shard), shardshuffle=False, empty_check=False):
            label = int(sample["cls"].decode())
            extension = "png" if "png" in sample else "jpg"
            path = directory / str(label) / f"{sample['__key__'].replace('/', '_')}.{extension}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(sample[extension])
            files.append((str(path), label))
    return files


class _ImageFolder(torch.utils.data.Dataset):
    def __init__(self, files: list[tuple[str, int]], decode):
        self.files, self.decode = files, decode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path, label = self.files[index]
        extension = path.rsplit(".", 1)[1]
        with open(path, "rb") as f:
            return self.decode({"__key__": path, extension: f.read(), "cls": str(label).encode()})


def _raw_files(files, decode, batch: int, workers: int, seed: int = 0):
    """A plain loader over the image folder, as a user writes one (torch's default collate); each
    pass over it is an epoch in a new shuffled order."""
    return torch.utils.data.DataLoader(
        _ImageFolder(files, decode), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
        multiprocessing_context="fork" if workers else None)


def _training_rate(study, manifest, decode, warmup: int = 3) -> float:
    from crdist.data.stream import read_split
    from crdist.models.classifier import build_classifier
    from crdist.train.engine import make_optimizer

    torch.set_num_threads(max(1, int(study.train.cpus_per_worker)))
    inputs, labels = read_split(manifest, 1, "train", decode, study.data.stream_url)
    model = build_classifier(study.model, manifest.in_channels, manifest.num_classes, study.seed,
                             image_size=manifest.image_size)
    optimizer = make_optimizer(model, study.train)
    batch = study.train.batch_size
    step, started = 0, None
    while True:  # steps after the warm-up, until MIN_SECONDS have passed (at least 3)
        if step == warmup:
            started = time.perf_counter()
        index = torch.randint(len(labels), (batch,))
        loss = torch.nn.functional.cross_entropy(model(inputs[index]), labels[index])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if started is not None and step - warmup >= 3 and time.perf_counter() - started >= MIN_SECONDS:
            return batch * (step - warmup) / (time.perf_counter() - started)
