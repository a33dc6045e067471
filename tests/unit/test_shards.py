"""Shards: exact round trip, per-rank streaming without loss or duplication, clear errors."""

import io
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from crdist.data.manifest import ImageInfo, Manifest, SplitRecord, TaskRecord
from crdist.data.prepare import PrepareError, prepare
from crdist.data.samples import ImageDecoder, SampleError, decode_pixels, make_decoder
from crdist.data.shards import sha256_of, verify, write_shards
from crdist.data.sources.base import png_bytes
from crdist.data.sources.digits import load_digits
from crdist.data.stream import RankStream, StreamError, StreamSpec, read_split
from crdist.data.tarstream import TarFormatError, tar_members
from crdist.integrity import digest_file
from tests.helpers import study


def raw_samples(urls):
    return {s["__key__"]: s for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())}


def test_written_samples_come_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    samples = [
        {"__key__": f"s{i:03d}", "png": rng.bytes(int(rng.integers(1, 300))), "cls": str(i % 7).encode()}
        for i in range(50)
    ]
    records = write_shards(tmp_path, "t/train", iter(samples), shard_size=16)
    assert [r.count for r in records] == [16, 16, 16, 2]
    back = raw_samples([str(tmp_path / r.path) for r in records])
    assert sorted(back) == [s["__key__"] for s in samples]
    for sample in samples:
        assert back[sample["__key__"]]["png"] == sample["png"]
        assert back[sample["__key__"]]["cls"] == sample["cls"]
    # Same samples, same bytes: the manifest hashes are reproducible.
    again = write_shards(tmp_path / "again", "t/train", iter(samples), shard_size=16)
    assert [r.sha256 for r in again] == [r.sha256 for r in records]


def test_prepared_digits_hold_the_source_pixels_and_labels(digits_shards):
    manifest = Manifest.load(digits_shards)
    source = load_digits()
    assert len(manifest.tasks) == 5
    seen = 0
    for task in manifest.tasks:
        for split_name, split in task.splits.items():
            samples = raw_samples([manifest.url(s) for s in split.shards])
            assert len(samples) == split.count
            for key, sample in samples.items():
                row = int(key.rsplit("-", 1)[1])
                label = int(sample["cls"])
                assert label == source.samples[row].label and label in task.classes
                np.testing.assert_array_equal(decode_pixels(sample, 1), source.arrays[row])
            seen += split.count if split_name != "adapt" else 0
    assert seen == len(source.samples)  # train + test of all tasks = every digit once
    # adaptation rows are train rows, never test rows
    for task in manifest.tasks:
        rows = {s: {k.rsplit("-", 1)[1] for k in raw_samples([manifest.url(x) for x in task.splits[s].shards])}
                for s in ("train", "test", "adapt")}
        assert rows["adapt"] <= rows["train"] and not rows["adapt"] & rows["test"]
        assert task.splits["adapt"].per_class == {str(c): 30 for c in task.classes}


DECODE = ImageDecoder(channels=1, mean=[0.0], std=[1.0])


def numbered_stream(tmp_path, shard_counts):
    """One task whose sample i is an 8×8 image filled with value i (so a decoded image names its sample)."""
    shards, i = [], 0
    for k, count in enumerate(shard_counts):
        samples = []
        for _ in range(count):
            pixels = np.full((8, 8, 1), i, np.uint8)
            samples.append({"__key__": f"{i:04d}", "png": png_bytes(pixels), "cls": str(i % 10).encode()})
            i += 1
        shards += write_shards(tmp_path, f"task-1/train-{k}", iter(samples), shard_size=count)
    split = SplitRecord(count=i, per_class={}, shards=shards)
    manifest = Manifest(
        benchmark="numbered", crdist_version="test", source={}, params={}, class_names=[str(c) for c in range(10)],
        image=ImageInfo(channels=1, height=8, width=8, mean=[0.0], std=[1.0]),
        tasks=[TaskRecord(index=1, name="task-1", classes=list(range(10)), splits={"train": split})],
    )
    manifest.root = tmp_path
    return manifest


def ids_per_rank(manifest, world, batch_size, epoch=0, loader_workers=2, order="sharded", per_batch=False):
    ranks = []
    for rank in range(world):
        spec = StreamSpec(task=1, split="train", rank=rank, world=world, batch_size=batch_size,
                          loader_workers=loader_workers, shuffle_buffer=20, seed=0, order=order)
        batches = list(RankStream(manifest, spec, DECODE).batches(epoch))
        assert all(len(y) == batch_size for _, y in batches)
        ids = [[round(v) for v in (x[:, 0, 0, 0] * 255).tolist()] for x, _ in batches]
        ranks.append(ids if per_batch else sum(ids, []))
    return ranks


def test_two_ranks_two_loader_workers_see_every_sample_once_in_equal_batches(tmp_path):
    manifest = numbered_stream(tmp_path, [12] * 8)  # 96 samples, 4 shards per rank, 2 per loader worker
    ranks = ids_per_rank(manifest, world=2, batch_size=8)
    assert len(ranks[0]) == len(ranks[1]) == 48  # 6 batches each
    assert sorted(ranks[0] + ranks[1]) == list(range(96))  # nothing lost, nothing duplicated
    assert ids_per_rank(manifest, world=2, batch_size=8) == ranks  # deterministic
    assert ids_per_rank(manifest, world=2, batch_size=8, epoch=1) != ranks  # reshuffled per epoch


def test_the_global_order_gives_each_rank_its_slice_of_the_one_rank_batches(tmp_path):
    manifest = numbered_stream(tmp_path, [12] * 6 + [5])  # 77 samples: 4 global batches of 16
    [one] = ids_per_rank(manifest, world=1, batch_size=16, order="global", per_batch=True)
    first, second = ids_per_rank(manifest, world=2, batch_size=8, order="global", per_batch=True)
    assert len(one) == len(first) == len(second) == 77 // 16
    assert [a + b for a, b in zip(first, second)] == one  # rank 0 the first half of each, rank 1 the second
    assert len(set(sum(one, []))) == 64  # no sample twice
    sharded = ids_per_rank(manifest, world=2, batch_size=8, per_batch=True)
    assert [a + b for a, b in zip(*sharded)] != one  # the sharded order depends on the world size


def test_uneven_shards_still_give_every_rank_the_same_number_of_batches(tmp_path):
    manifest = numbered_stream(tmp_path, [12] * 6 + [5])  # ranks hold 41 and 36 (or 48 and 29) samples
    ranks = ids_per_rank(manifest, world=2, batch_size=8)
    assert len(ranks[0]) == len(ranks[1])
    assert len(set(ranks[0] + ranks[1])) == len(ranks[0]) + len(ranks[1])  # no duplicates
    spec = StreamSpec(task=1, split="train", rank=0, world=2, batch_size=8, loader_workers=2, shuffle_buffer=20, seed=0)
    assert len(ranks[0]) == 8 * RankStream(manifest, spec, DECODE).steps_in_epoch(0)


def test_a_truncated_shard_is_named_in_the_error(tmp_path):
    manifest = numbered_stream(tmp_path, [12] * 2)
    shard = tmp_path / manifest.tasks[0].splits["train"].shards[1].path
    shard.write_bytes(shard.read_bytes()[:700])
    with pytest.raises(StreamError, match=str(shard)):
        read_split(manifest, 1, "train", DECODE)
    assert any(str(shard) in problem for problem in verify(manifest))


def test_a_flipped_byte_inside_a_member_is_caught_before_any_sample_of_its_shard_is_used(tmp_path):
    """A bit a failing disk flipped in a sample's bytes leaves every tar header valid: the shard's
    digest (from its manifest) is what catches it, for training and evaluation alike."""
    manifest = numbered_stream(tmp_path, [12] * 2)
    shard = tmp_path / manifest.tasks[0].splits["train"].shards[1].path
    data = bytearray(shard.read_bytes())
    data[512] ^= 0x01  # the first member's first byte, past its header (a class label: "2" becomes "3")
    shard.write_bytes(bytes(data))
    with pytest.raises(StreamError, match=f"{shard}: .* differ from the digest in its manifest.*crdist prepare --verify"):
        read_split(manifest, 1, "train", DECODE)
    spec = StreamSpec(task=1, split="train", rank=0, world=1, batch_size=4, loader_workers=0, shuffle_buffer=1, seed=0)
    with pytest.raises(StreamError, match=str(shard)):
        list(RankStream(manifest, spec, DECODE).batches(0))
    assert any(str(shard) in problem for problem in verify(manifest))


def _archive(fmt) -> bytes:
    """A tar in ``fmt`` with what other writers put in shards: long and non-ASCII names, a float
    mtime (a PAX header per member), a directory, a symlink, an empty member, WebDataset metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in [("d" * 90 + "/" + "x" * 80 + ".png", bytes(range(256)) * 3), ("b.cls", b"3"),
                           ("ü/é.txt", "ä".encode()), ("e" * 120 + ".cls", b""), ("__meta__", b"m")]:
            if fmt == tarfile.USTAR_FORMAT and len(name) > 100 and "/" not in name:
                continue  # ustar cannot hold it
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0.5
            tar.addfile(info, io.BytesIO(data))
        for name, kind in [("dir", tarfile.DIRTYPE), ("link", tarfile.SYMTYPE)]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "l" * (200 if fmt != tarfile.USTAR_FORMAT else 10)
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_tar_reader_gives_what_tarfile_gives(fmt):
    raw = _archive(fmt)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]
    assert len(expected) >= 4
    assert list(tar_members(io.BytesIO(raw))) == expected


def test_the_tar_reader_refuses_a_bad_checksum_and_a_truncation(tmp_path):
    raw = bytearray(_archive(tarfile.USTAR_FORMAT))
    raw[5] ^= 0x01  # one bit of the first member's name
    with pytest.raises(TarFormatError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(raw))))
    raw[5] ^= 0x01
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        first = tar.getmembers()[0]
    first_member_end = first.offset_data + -(-first.size // 512) * 512  # its data padded to whole blocks
    for cut, reason in [(first_member_end, "end-of-archive"), (first_member_end - 100, "cut short"),
                        (first_member_end + 100, "inside a member header")]:
        with pytest.raises(TarFormatError, match=reason):
            list(tar_members(io.BytesIO(bytes(raw[:cut]))))


def test_a_shard_cut_at_a_member_boundary_is_named_in_the_error(tmp_path):
    manifest = numbered_stream(tmp_path, [12] * 2)
    shard = tmp_path / manifest.tasks[0].splits["train"].shards[0].path
    with tarfile.open(shard) as tar:
        third = tar.getmembers()[2]
    shard.write_bytes(shard.read_bytes()[:third.offset])  # two whole members, nothing after them
    # Against its manifest, the shard's digest catches it before a member is read...
    with pytest.raises(StreamError, match=rf"{shard}: {third.offset:,} bytes that differ from the digest"):
        read_split(manifest, 1, "train", DECODE)
    # ...and the tar reader alone still sees a cut there (a stream read without its manifest).
    with open(shard, "rb") as stream, pytest.raises(TarFormatError, match="ends without the end-of-archive block"):
        list(tar_members(stream))


def test_decoding_by_lookup_gives_the_floats_of_the_tensor_operations():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for channels, mean, std in [(1, [0.2860], [0.3530]), (3, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])]:
        decoder = ImageDecoder(channels, mean, std)
        pixels = levels[..., None] if channels == 1 else np.stack([levels, levels[::-1], levels.T], axis=-1)
        sample = {"png": png_bytes(pixels), "cls": b"4"}
        image, label = decoder(sample)
        assert label == 4 and image.shape == (channels, 16, 16)
        assert torch.equal(image, decoder.normalize(decoder.pixels(sample)))  # every level, bit for bit


def test_a_batch_decoded_as_pixels_and_normalised_is_the_collated_samples_bit_for_bit():
    from crdist.data.samples import collate

    rng = np.random.default_rng(0)
    decoder = ImageDecoder(3, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    samples = [{"png": png_bytes(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)), "cls": str(k).encode()}
               for k in range(5)]
    pixels, labels = decoder.batch_pixels(samples)
    assert pixels.dtype == torch.uint8 and pixels.shape == (5, 12, 10, 3)
    expected = collate([decoder(s) for s in samples])
    assert torch.equal(decoder.normalize_batch(pixels), expected[0]) and torch.equal(labels, expected[1])
    odd = {"png": png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), "cls": b"1", "__key__": "odd"}
    with pytest.raises(SampleError, match=r"odd\): 8×8 px in a batch of 10×12 px images; set data.image_size"):
        decoder.batch_pixels([samples[0], odd])


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_jpeg_batches_through_the_pixel_path_equal_the_per_sample_path(tmp_path, monkeypatch, loader_workers):
    """Real JPEG shards (photographs, 32 px): the stream's batches of pixels, normalised after the
    loader, are the batches of decoding each sample and collating, bit for bit, in the same order."""
    from tests.helpers.fixtures import photo_folder

    photo_folder(tmp_path / "photos", classes=2, per_class=24, size=32)
    cfg = study(data={"benchmark": "imagefolder", "root": str(tmp_path / "photos"), "shards": str(tmp_path / "shards"),
                      "tasks": 1, "classes_per_task": 2, "shard_size": 8, "adapt_per_class": 2})
    manifest = prepare(cfg.data, log=lambda line: None)
    decode = make_decoder(manifest, cfg.model)
    spec = StreamSpec(task=1, split="train", rank=0, world=1, batch_size=4, loader_workers=loader_workers,
                      shuffle_buffer=10, seed=0)

    def epoch(e):
        return [(x.clone(), y.clone()) for x, y in RankStream(manifest, spec, decode).batches(e)]

    fused = epoch(1)
    assert RankStream(manifest, spec, decode)._pixels_cross
    monkeypatch.setattr(RankStream, "_pixels_cross", property(lambda self: False))  # decode each, then collate
    apart = epoch(1)
    assert len(fused) == len(apart) > 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fused, apart))


def test_a_corrupt_image_is_named_in_the_error(tmp_path):
    manifest = numbered_stream(tmp_path, [4, 4])
    shard = tmp_path / manifest.tasks[0].splits["train"].shards[0].path
    members = []
    with tarfile.open(shard) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            members.append((member, b"not a png" if member.name.endswith(".png") else data))
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    # Written so (a corrupt image in the source), the shard matches its manifest: the decoder names it.
    record = manifest.tasks[0].splits["train"].shards[0]
    record.bytes, record.sha256, record.xxh3 = shard.stat().st_size, sha256_of(shard), digest_file(shard).value
    with pytest.raises(Exception, match=rf"{shard}.*cannot decode image"):
        read_split(manifest, 1, "train", DECODE)
    for cache_bytes in (0, 1 << 20):  # a training stream, which decodes as it reads with the cache
        stream = RankStream(manifest, StreamSpec(1, "train", 0, 1, 2, 0, 8, 0, cache_bytes=cache_bytes), DECODE)
        with pytest.raises(Exception, match=rf"{shard}.*cannot decode image"):
            list(stream.batches(0))


def test_preparing_twice_reuses_and_a_half_written_preparation_is_not_mistaken(tmp_path):
    data = study(data={"shards": str(tmp_path / "digits"), "tasks": 2}).data
    prepare(data, log=lambda line: None)
    manifest_mtime = (tmp_path / "digits" / "manifest.json").stat().st_mtime_ns
    lines = []
    prepare(data, log=lines.append)
    assert lines == [f"reusing prepared shards in {tmp_path / 'digits'}"]
    assert (tmp_path / "digits" / "manifest.json").stat().st_mtime_ns == manifest_mtime
    # A preparation killed midway leaves only a hidden partial directory, never the target.
    (tmp_path / "digits2").mkdir()
    (tmp_path / "digits2" / "task-1").mkdir()
    with pytest.raises(PrepareError, match="holds no manifest.json"):
        prepare(study(data={"shards": str(tmp_path / "digits2")}).data, log=lambda line: None)
    # Asking for a different preparation in the same place is refused, naming what differs.
    with pytest.raises(PrepareError, match="tasks: 2 there, 3 asked"):
        prepare(study(data={"shards": str(tmp_path / "digits"), "tasks": 3}).data, log=lambda line: None)


KILLED_MIDWAY = """
import os, signal, sys
import crdist.data.writer as writer
from crdist.config import from_dict
from crdist.data.prepare import prepare
from crdist.study import StudyConfig

real_write = writer.write_shard
written = []
def write_then_die(*args, **kwargs):
    written.append(1)
    if len(written) == 3:  # in a shard-writing process: kill the whole preparation, as a preemption would
        os.killpg(0, signal.SIGKILL)
    return real_write(*args, **kwargs)
writer.write_shard = write_then_die
prepare(from_dict(StudyConfig, {"data": {"shards": sys.argv[1]}}).data)
"""


def test_a_killed_preparation_never_looks_finished_and_a_rerun_completes_it(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "digits"
    killed = subprocess.run([sys.executable, "-c", KILLED_MIDWAY, str(out)], capture_output=True, timeout=120,
                            start_new_session=True)
    assert killed.returncode == -9
    assert not out.exists()
    partials = list(tmp_path.glob(".digits.partial-*"))
    assert len(partials) == 1 and not (partials[0] / "manifest.json").exists()

    manifest = prepare(study(data={"shards": str(out)}).data, log=lambda line: None)
    assert len(manifest.tasks) == 5 and verify(manifest) == []
    assert list(tmp_path.glob(".digits.partial-*")) == []  # the dead process's leftovers are cleaned up


def test_a_stream_over_several_tasks_deals_out_the_samples_of_all_of_them(digits_shards):
    # The joint reference trains task 2 on tasks 1 and 2 together.
    from crdist.methods.base import method_class

    manifest = Manifest.load(digits_shards)
    assert method_class("joint").tasks_to_stream(3) == (1, 2, 3) and method_class("sgd").tasks_to_stream(3) == (3,)
    decode = ImageDecoder(1, manifest.image.mean, manifest.image.std)
    labels = []
    for rank in (0, 1):
        stream = RankStream(manifest, StreamSpec(2, "train", rank, 2, 1, 0, 64, 0, also=(1,)), decode)
        labels += [int(y) for _, batch in stream.batches(0) for y in batch]
    expected = manifest.task(1).splits["train"].per_class | manifest.task(2).splits["train"].per_class
    shards = manifest.task(1).splits["train"].shards + manifest.task(2).splits["train"].shards
    # Each rank runs as many steps as the poorest one can fill: at most a shard's worth is left out.
    assert len(labels) == 2 * stream.steps_in_epoch(0) > sum(expected.values()) - max(s.count for s in shards)
    assert all(labels.count(int(c)) <= n for c, n in expected.items()) and set(labels) == {int(c) for c in expected}


def test_one_stream_keeps_its_loader_workers_across_epochs_and_reads_what_a_fresh_one_reads(tmp_path):
    manifest = numbered_stream(tmp_path, [12] * 8)
    spec = StreamSpec(task=1, split="train", rank=0, world=2, batch_size=8, loader_workers=2, shuffle_buffer=20,
                      seed=0)
    stream = RankStream(manifest, spec, DECODE)
    ids = lambda batches: [round(v) for x, _ in batches for v in (x[:, 0, 0, 0] * 255).tolist()]  # noqa: E731
    epochs, workers = [], []
    for epoch in (0, 1, 2):
        epochs.append(ids(stream.batches(epoch)))
        workers.append([w.pid for w in stream._loader._iterator._workers])
    assert workers[0] == workers[1] == workers[2] and len(workers[0]) == 2  # the same two processes
    # Each epoch exactly as a stream made for it alone reads it (a resumed job starts there).
    for epoch, seen in enumerate(epochs):
        assert seen == ids(RankStream(manifest, spec, DECODE).batches(epoch))
    assert epochs[0] != epochs[1]
    # An epoch left half-read (a job that reached its last step mid-epoch) does not leak into the next.
    partial = stream.batches(0)
    next(partial)
    assert ids(stream.batches(1)) == epochs[1]


def test_decoded_images_kept_across_epochs_change_no_batch_and_stay_within_the_budget(tmp_path, digits_shards):
    manifest = Manifest.load(digits_shards)
    decode = ImageDecoder(1, manifest.image.mean, manifest.image.std)
    for augment, workers in (("none", 2), ("paper", 0)):
        runs = []
        for cache_bytes in (0, 1 << 20):
            spec = StreamSpec(1, "train", 0, 2, 16, workers, 64, 0, augment=augment, cache_bytes=cache_bytes)
            stream = RankStream(manifest, spec, decode)
            runs.append([batch for epoch in range(3) for batch in stream.batches(epoch)])
        uncached, cached = runs
        assert len(uncached) == len(cached) > 0
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(uncached, cached)), augment

    # In process (no loader workers), one rank reading 8 shards of 12 samples each epoch: the shards
    # that fit in the budget whole are decoded once and come from memory in every later epoch; the
    # rest are read and decoded every time.
    image_bytes = 8 * 8
    for budget, kept in ((96 * image_bytes, 8), (30 * image_bytes, 2)):
        (tmp_path / str(budget)).mkdir()
        manifest = numbered_stream(tmp_path / str(budget), [12] * 8)
        stream = RankStream(manifest, StreamSpec(1, "train", 0, 1, 8, 0, 20, 0, cache_bytes=budget), DECODE)
        cache = stream.cache
        first = list(stream.batches(0))
        assert (len(cache), cache.used_bytes, cache.hits, cache.misses) == (kept * 12, kept * 12 * image_bytes, 0, 8)
        second = list(stream.batches(1))
        assert (cache.hits, cache.misses) == (kept, 8 + 8 - kept)
        ids = sorted(round(v) for x, _ in second for v in (x[:, 0, 0, 0] * 255).tolist())
        assert ids == list(range(96)) and len(first) == len(second) == 12
    # What comes from memory opens no file: with every shard kept, epoch 2 reads the same without them.
    (tmp_path / "whole").mkdir()
    manifest = numbered_stream(tmp_path / "whole", [12] * 8)
    spec = StreamSpec(1, "train", 0, 1, 8, 0, 20, 0, cache_bytes=96 * image_bytes)
    stream = RankStream(manifest, spec, DECODE)
    list(stream.batches(0))
    for shard in (tmp_path / "whole").rglob("*.tar"):
        shard.unlink()
    from_memory = list(stream.batches(2))
    assert stream.cache.hits == 8
    with pytest.raises(Exception, match="No such file"):  # a stream without the cache needs the files
        list(RankStream(manifest, spec, DECODE).batches(2))
    (tmp_path / "again").mkdir()
    from_files = list(RankStream(numbered_stream(tmp_path / "again", [12] * 8), spec, DECODE).batches(2))
    assert len(from_memory) == len(from_files) == 12
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(from_memory, from_files))
