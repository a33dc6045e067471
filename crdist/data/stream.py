"""Stream one task split to one rank: deterministic order, the same number of batches on every rank.

Sharding happens here, inside the WebDataset pipeline (shards split by rank, then by loader
worker), never through ``accelerator.prepare``, which would shard a second time.

Two orders (``train.data_order``):

- ``sharded`` (the default): each epoch the shard list is permuted by (seed, task, epoch); rank r
  takes every world-th shard, and its loader workers split those again. Every rank can compute
  from the manifest alone how many samples every other rank holds, so all ranks stop after the
  same number of batches (``RankStream.steps_in_epoch``) and no collective waits on a rank that
  ran dry. Each rank reads only its shards, but what a step sees depends on the worker count.
- ``global``: every rank reads every shard of the epoch in the same seeded order and shuffle (so
  all ranks see one global sequence), and keeps its slice of each global batch: rank r takes
  samples [r·b, (r+1)·b) of every world·b. With the same global batch, 1 rank and N ranks then
  train on the same samples at every step, so a run's result does not depend on how many workers
  it had (up to the order of floating-point sums). The price: every rank reads and decodes the
  whole split, N times the I/O of ``sharded``. Meant for small data and for checking a method's
  equivalence across world sizes.
"""

from __future__ import annotations

import copy
import multiprocessing
import random
from dataclasses import dataclass
from itertools import islice
from typing import Iterator

import torch
import webdataset as wds
from webdataset.filters import pipelinefilter

from crdist.data.manifest import Manifest, ShardRecord
from crdist.data.cache import ShardCache
from crdist.data.samples import ImageDecoder, SampleError, collate, concat, take
from crdist.data.tarstream import tar_to_samples
from crdist.errors import CrdistError


_LOADER_CONTEXT = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


class StreamError(CrdistError, RuntimeError):
    pass


@dataclass(frozen=True)
class StreamSpec:
    task: int
    split: str
    rank: int
    world: int
    batch_size: int  # per rank
    loader_workers: int
    shuffle_buffer: int
    seed: int
    # Earlier tasks whose shards join this task's (the joint reference trains on tasks 1..i);
    # the order and the shuffle stay seeded by ``task``.
    also: tuple[int, ...] = ()
    order: str = "sharded"  # or "global" (see the module's docstring)
    augment: str = "none"  # data.augment: a policy of crdist.data.augment, seeded per sample and epoch
    # Micro-batches per optimizer step (train.global_batch). In the global order a step's global
    # batch is world · accumulation · batch_size samples, and rank r's micro-batches are its
    # consecutive slices r·accumulation … (r+1)·accumulation − 1 of it: the same global batches
    # on any number of workers.
    accumulation: int = 1
    # Decoded pixels each loading process keeps across epochs (crdist.data.cache); 0 = none.
    cache_bytes: int = 0


def epoch_order(shards: list[ShardRecord], seed: int, task: int, epoch: int) -> list[ShardRecord]:
    order = list(shards)
    random.Random(f"shards/{seed}/{task}/{epoch}").shuffle(order)
    return order


def rank_shards(order: list[ShardRecord], rank: int, world: int) -> list[ShardRecord]:
    return order[rank::world]


def _full_batches_of_poorest_rank(shards: list[ShardRecord], spec: StreamSpec, epoch: int) -> int:
    if spec.order == "global":  # whole global batches, as micro-batches of this rank
        return sum(s.count for s in shards) // (spec.batch_size * spec.world * spec.accumulation) * spec.accumulation
    order = epoch_order(shards, spec.seed, spec.task, epoch)
    return min(sum(s.count for s in rank_shards(order, r, spec.world)) // spec.batch_size for r in range(spec.world))


class RankStream:
    """The batches one rank trains on, epoch by epoch.

    ``decode`` turns a shard sample into (inputs, label) (see crdist.data.samples.make_decoder);
    ``url_template`` maps a shard's path to what WebDataset opens (e.g. a ``pipe:`` command).
    """

    def __init__(self, manifest: Manifest, spec: StreamSpec, decode=None, url_template: str | None = None):
        self.manifest = manifest
        self.spec = spec
        self.decode = decode
        # Each loader worker (forked with an empty cache) fills and keeps its own.
        self.cache = ShardCache(spec.cache_bytes) if spec.cache_bytes > 0 and isinstance(decode, ImageDecoder) else None
        self.url_template = url_template
        self.shards = [s for t in (*spec.also, spec.task) for s in manifest.split(t, spec.split).shards]
        # Each shard is checked against its manifest's digest as it is read (crdist/data/tarstream.py).
        self.records = {manifest.url(s, url_template): s for s in self.shards}
        self._loader: torch.utils.data.DataLoader | None = None
        self._epoch = None  # the epoch the loader's workers read, in shared memory
        if spec.order not in ("sharded", "global"):
            raise StreamError(f"unknown data order {spec.order!r}; expected 'sharded' or 'global'")
        if spec.order == "sharded" and len(self.shards) < spec.world:
            raise StreamError(
                f"task {spec.task} {spec.split} split has {len(self.shards)} shard(s) for {spec.world} ranks; "
                f"prepare it with a smaller data.shard_size so that every rank gets at least one shard"
            )

    def steps_in_epoch(self, epoch: int) -> int:
        """Full batches the poorest rank can fill this epoch; every rank runs exactly this many."""
        return _full_batches_of_poorest_rank(self.shards, self.spec, epoch)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Exactly ``steps_in_epoch(epoch)`` batches of ``batch_size`` samples."""
        spec = self.spec
        steps = self.steps_in_epoch(epoch)
        if steps == 0:
            raise StreamError(
                f"task {spec.task}: a rank holds fewer than batch_size={spec.batch_size} samples in epoch {epoch}; "
                "lower train.batch_size or use fewer workers"
            )
        ranked = spec.order == "sharded"
        # In the global order the loaders batch whole global batches: how their workers interleave
        # then does not depend on the worker count.
        loader_batch = spec.batch_size if ranked else spec.batch_size * spec.world * spec.accumulation
        batches = rebatch(self._epoch_batches(epoch), loader_batch)
        if not ranked:
            batches = _my_micro_batches(batches, spec)
        if self._pixels_cross:
            batches = ((self.decode.normalize_batch(pixels), labels) for pixels, labels in batches)
        return _exactly(islice(batches, steps), steps, f"rank {spec.rank}, task {spec.task} {spec.split}, "
                        f"epoch {epoch}")

    def _epoch_batches(self, epoch: int):
        """The loader's batches of ``epoch``; the epoch is set when iteration starts, so a pass
        that is created and not yet iterated cannot change what another one reads."""
        yield from self._loader_for(epoch)

    def pipeline(self, epoch: int) -> wds.DataPipeline:
        """This rank's samples of ``epoch``, decoded and batched, as one loader worker reads them."""
        spec = self.spec
        order = epoch_order(self.shards, spec.seed, spec.task, epoch)
        ranked = spec.order == "sharded"
        shards = rank_shards(order, spec.rank, spec.world) if ranked else order
        urls = [self.manifest.url(s, self.url_template) for s in shards]
        # The global order shuffles with one seed on every rank and batches the global batch, so
        # every rank's loader yields the same sequence; the sharded order seeds per rank.
        shuffle_seed = f"samples/{spec.seed}/{spec.task}/{epoch}" + (f"/{spec.rank}" if ranked else "")
        loader_batch = spec.batch_size if ranked else spec.batch_size * spec.world * spec.accumulation
        return wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.split_by_worker,
            # With the cache, each shard's images are decoded as it is read, before the shuffle
            # (the same pixels in the same order), and a shard read once before comes from memory.
            tar_to_samples(handler=_name_the_shard, records=self.records) if self.cache is None
            else _cached_shards(self.cache, self.decode, self.records),
            # The same seed in every loader worker is fine: each shuffles different shards.
            wds.shuffle(spec.shuffle_buffer, initial=spec.shuffle_buffer, rng=random.Random(shuffle_seed)),
            *self._decode_and_batch(epoch, loader_batch),
        )

    def _decode_and_batch(self, epoch: int, size: int) -> list:
        """The pipeline's last stages: images without augmentation are decoded into a batch of 8-bit
        pixels (``ImageDecoder.batch_pixels``), which ``batches`` normalises once it has crossed
        from the loader workers; anything else is decoded sample by sample, then collated."""
        decode = self._decoder(epoch)
        if self._pixels_cross:
            return [wds.batched(size, collation_fn=decode.batch_pixels, partial=True)]
        return [wds.map(decode), wds.batched(size, collation_fn=collate, partial=True)]

    @property
    def _pixels_cross(self) -> bool:
        """Whether the loader hands over 8-bit pixels (normalised here) rather than finished inputs."""
        return isinstance(self.decode, ImageDecoder) and self.spec.augment == "none"

    def _loader_for(self, epoch: int) -> torch.utils.data.DataLoader:
        """One loader for every epoch of the stream. Its worker processes persist: each epoch they
        build that epoch's pipeline (the epoch is in shared memory, set before the loader is
        iterated again), instead of new processes being forked for every epoch."""
        if self._loader is None:
            spec = self.spec
            shards = len(self.shards) if spec.order == "global" else len(rank_shards(self.shards, spec.rank, spec.world))
            workers = min(spec.loader_workers, shards)
            context = multiprocessing.get_context(_LOADER_CONTEXT) if workers else None
            self._epoch = (context or multiprocessing).Value("i", epoch, lock=False)
            # The workers get a copy of this stream without the loader: a loader reachable from its
            # own dataset is a reference cycle, freed only by the garbage collector, whose shutdown
            # of the workers then waited 5 s for each of them.
            source = copy.copy(self)
            self._loader = torch.utils.data.DataLoader(
                _EpochPipeline(source, self._epoch),
                batch_size=None,
                num_workers=workers,
                persistent_workers=workers > 0,
                # Fork explicitly: a process started by "spawn" (torch.multiprocessing, some launchers)
                # would otherwise spawn its loaders too, and each would re-import torch for seconds.
                multiprocessing_context=context,
                # Its own generator: iterating must not draw from the global RNG that checkpoints save.
                generator=torch.Generator().manual_seed(0),
            )
        self._epoch.value = epoch
        return self._loader

    def _decoder(self, epoch: int):
        if self.spec.augment == "none":
            return self.decode
        if not isinstance(self.decode, ImageDecoder):
            raise StreamError(f"data.augment={self.spec.augment} applies to images; this stream holds "
                              f"{self.manifest.modality}")
        # Imported only for a study that augments: it imports torchvision (see
        # crdist/models/backbones/__init__.py).
        from crdist.data.augment import AugmentingDecoder

        return AugmentingDecoder(self.decode, self.spec.augment, self.spec.seed, self.spec.task, epoch)


def _shards_through_cache(sources, cache: ShardCache, decode: ImageDecoder, records: dict):
    """WebDataset's tar stage through ``cache``: each shard from memory when kept, else read."""
    for source in sources:
        read = (lambda source=source: tar_to_samples(handler=_name_the_shard, records=records)([source]))
        yield from cache.samples(source["url"], read, decode.decode_pixels)


_cached_shards = pipelinefilter(_shards_through_cache)


class _EpochPipeline(torch.utils.data.IterableDataset):
    """The pipeline of the epoch the stream is in, built afresh each time it is iterated."""

    def __init__(self, stream: RankStream, epoch):
        self.stream, self.epoch = stream, epoch

    def __iter__(self):
        return iter(self.stream.pipeline(self.epoch.value))


def _my_micro_batches(global_batches: Iterator, spec: StreamSpec) -> Iterator:
    b = spec.batch_size
    for x, y in global_batches:
        for a in range(spec.accumulation):
            first = (spec.rank * spec.accumulation + a) * b
            yield take(x, slice(first, first + b)), y[first:first + b]


def _exactly(batches: Iterator, steps: int, where: str) -> Iterator:
    """Fail loudly if the shards hold fewer samples than the manifest says: a rank that ran short
    would otherwise leave the other ranks waiting forever in a collective."""
    produced = 0
    for batch in batches:
        produced += 1
        yield batch
    if produced < steps:
        raise StreamError(f"{where}: got {produced} batches, expected {steps}; the shards hold fewer samples "
                          "than their manifest lists (check them with crdist prepare --verify)")


def rebatch(batches, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Regroup the loader workers' (possibly partial) batches into full batches of ``size``."""
    inputs: list = []
    labels: list[torch.Tensor] = []
    held = 0
    for x, y in batches:
        if held == 0 and len(y) == size:  # already a whole batch (no loader workers, or none split it)
            yield x, y
            continue
        inputs.append(x)
        labels.append(y)
        held += len(y)
        while held >= size:
            x_all, y_all = concat(inputs), torch.cat(labels)
            yield take(x_all, slice(0, size)), y_all[:size]
            inputs, labels = [take(x_all, slice(size, None))], [y_all[size:]]
            held -= size


def read_split(manifest: Manifest, task: int, split: str, decode, url_template: str | None = None):
    """A whole (small) split in shard order, decoded, in this process: for evaluation."""
    return collate([sample for batch in _split_samples(manifest, task, split, decode, url_template)
                    for sample in batch])


def stream_split(manifest: Manifest, task: int, split: str, decode, url_template: str | None = None,
                 batch_size: int = 256) -> Iterator[tuple[object, torch.Tensor]]:
    """A split in shard order as batches of (inputs, labels), in this process; only one batch of
    decoded inputs is held at a time."""
    for batch in _split_samples(manifest, task, split, decode, url_template, batch_size):
        yield collate(batch)


def _split_samples(manifest: Manifest, task: int, split: str, decode, url_template: str | None,
                   batch_size: int | None = None) -> Iterator[list]:
    urls = [manifest.url(s, url_template) for s in manifest.split(task, split).shards]
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls), tar_to_samples(handler=_name_the_shard, records=manifest.shard_records(url_template)),
        wds.map(decode)
    )
    expected = manifest.split(task, split).count
    read, batch = 0, []
    for sample in pipeline:
        batch.append(sample)
        read += 1
        if batch_size is not None and len(batch) == batch_size:
            yield batch
            batch = []
    if read != expected:
        raise StreamError(f"task {task} {split}: read {read} samples, the manifest lists {expected}")
    if batch:
        yield batch


def _name_the_shard(exn: Exception) -> bool:
    """webdataset error handler: re-raise with the shard's name in the message."""
    if isinstance(exn, SampleError):
        raise exn
    raise StreamError(f"cannot read shard: {exn}") from exn
