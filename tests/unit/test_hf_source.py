"""The hf benchmark on datasets built with `datasets` itself, in each format it reads: the shards
give back exactly the dataset's rows (image bytes, texts), labels and task split."""

import io
import json

import numpy as np
import pytest
import webdataset as wds
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from crdist.data.manifest import Manifest
from crdist.data.prepare import prepare
from crdist.data.samples import decode_pixels
from crdist.data.sources.base import SourceError
from tests.helpers import study


def prepared(tmp_path, root, name="shards", **options) -> Manifest:
    data = study(data={"benchmark": "hf", "root": str(root), "shards": str(tmp_path / name), **options}).data
    return prepare(data, log=lambda line: None)


def streamed(manifest: Manifest) -> dict:
    """(task, split) → {(source split, row): sample} of every shard."""
    out = {}
    for task in manifest.tasks:
        for split in ("train", "test", "adapt"):
            urls = [manifest.url(s) for s in manifest.split(task.index, split).shards]
            samples = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()) if urls else []
            out[(task.index, split)] = {(s["__key__"].split("-")[2], int(s["__key__"].rsplit("-", 1)[1])): s
                                        for s in samples}
    return out


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Not the compression crdist would re-encode with: stored bytes equal to these are the originals.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_rows(rng, count, classes, shape=(6, 6)) -> tuple[list[bytes], list[int]]:
    labels = [i % classes for i in range(count)]
    return [png(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in labels], labels


def assert_exact(manifest, rows_by_split, classes_of_task):
    """Every train and test row is in exactly one task, the one holding its class, with its own
    content and label; the adaptation rows are train rows of their task."""
    got = streamed(manifest)
    for split, rows in rows_by_split.items():
        seen = {}
        for task in manifest.tasks:
            for (source_split, row), sample in got[(task.index, split)].items():
                assert source_split == split and (source_split, row) not in seen
                seen[(source_split, row)] = task.index
                content, label = rows[row]
                assert int(sample["cls"]) == label and label in classes_of_task[task.index]
                assert sample.get("png", sample.get("jpg", sample.get("txt"))) == content
        assert set(seen) == {(split, row) for row in range(len(rows))}
    for task in manifest.tasks:
        assert set(got[(task.index, "adapt")]) <= set(got[(task.index, "train")])


def test_a_save_to_disk_image_dataset_streams_byte_for_byte_and_stays_one_channel(tmp_path):
    rng = np.random.default_rng(0)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["ant", "bee", "cat", "dog"])})
    splits = {}
    for split, count in (("train", 24), ("test", 8)):
        images, labels = image_rows(rng, count, 4)
        splits[split] = Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "label": labels},
                                          features=features)
    DatasetDict(splits).save_to_disk(tmp_path / "disk")

    manifest = prepared(tmp_path, tmp_path / "disk", adapt_per_class=2)
    assert manifest.class_names == ["ant", "bee", "cat", "dog"]
    assert [t.classes for t in manifest.tasks] == [[0, 1], [2, 3]]
    assert manifest.image.channels == 1 and (manifest.image.height, manifest.image.width) == (6, 6)
    rows = {s: list(zip([c["bytes"] for c in d.cast_column("image", ImageFeature(decode=False))["image"]],
                        d["label"])) for s, d in splits.items()}
    assert_exact(manifest, rows, {1: [0, 1], 2: [2, 3]})
    assert prepared(tmp_path, tmp_path / "disk", adapt_per_class=2) == manifest  # reused as it is


def test_an_image_folder_keeps_grayscale_and_stores_other_formats_as_lossless_png(tmp_path):
    rng = np.random.default_rng(1)
    files = {}
    for split, per_class in (("train", 4), ("test", 2)):
        for name in ("left", "right"):
            folder = tmp_path / "folder" / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (5, 5), dtype=np.uint8)
                path = folder / f"{k}.{'bmp' if k == 0 else 'png'}"
                Image.fromarray(pixels).save(path, compress_level=1)
                files[(split, name, k)] = (path, pixels)

    manifest = prepared(tmp_path, tmp_path / "folder", adapt_per_class=2, classes_per_task=1)
    assert manifest.class_names == ["left", "right"] and manifest.image.channels == 1
    got = streamed(manifest)
    for (split, name, k), (path, pixels) in files.items():
        label = manifest.class_names.index(name)
        matches = [s for s in got[(label + 1, split)].values() if np.array_equal(decode_pixels(s, 1)[..., 0], pixels)]
        assert len(matches) == 1 and int(matches[0]["cls"]) == label
        if path.suffix == ".png":
            assert matches[0]["png"] == path.read_bytes()  # byte for byte
        else:
            assert "png" in matches[0]  # a BMP, re-encoded: the pixels above are equal
    assert sum(len(got[(t, s)]) for t in (1, 2) for s in ("train", "test")) == len(files)


def test_parquet_images_with_string_labels_by_class(tmp_path):
    rng = np.random.default_rng(2)
    labels = ["zebra", "ant", "moth", "zebra", "ant", "moth"] * 3
    images = [png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)) for _ in labels]
    features = Features({"picture": ImageFeature(), "kind": Value("string"), "note": Value("string")})
    table = Dataset.from_dict({"picture": [{"bytes": b, "path": None} for b in images], "kind": labels,
                               "note": ["x"] * len(labels)}, features=features)
    table.to_parquet(tmp_path / "pictures.parquet")

    manifest = prepared(tmp_path, tmp_path / "pictures.parquet", adapt_per_class=2, classes_per_task=3,
                        hf={"label": "kind"})
    assert manifest.class_names == ["ant", "moth", "zebra"] and manifest.image.channels == 3
    names = manifest.class_names
    got = streamed(manifest)
    train_and_test = {**got[(1, "train")], **got[(1, "test")]}
    assert {row for _, row in train_and_test} == set(range(len(labels)))  # no test split: held out
    for (_, row), sample in train_and_test.items():
        assert sample["png"] == images[row] and names[int(sample["cls"])] == labels[row]


def test_csv_and_json_text_split_into_domains_in_the_given_order(tmp_path):
    rows = [{"sentence": f"text number {i}, with \"quotes\"", "stars": i % 3, "site": ["web", "news", "mail"][i % 4 % 3]}
            for i in range(36)]
    table = Dataset.from_list(rows)
    table.to_csv(tmp_path / "reviews.csv", index=False)
    table.to_json(tmp_path / "train.jsonl")
    Dataset.from_list(rows[:9]).to_json(tmp_path / "test.jsonl")

    from_csv = prepared(tmp_path, tmp_path / "reviews.csv", name="csv", adapt_per_class=2,
                        hf={"input": "sentence", "label": "stars", "domain": "site", "domains": ["news", "web", "mail"]})
    assert from_csv.modality == "text" and [t.name for t in from_csv.tasks] == ["news", "web", "mail"]
    assert from_csv.class_names == ["0", "1", "2"]
    got = streamed(from_csv)
    for task in from_csv.tasks:
        mine = {**got[(task.index, "train")], **got[(task.index, "test")]}
        assert {row for _, row in mine} == {i for i, r in enumerate(rows) if r["site"] == task.name}
        for (_, row), sample in mine.items():
            assert sample["txt"].decode() == rows[row]["sentence"] and int(sample["cls"]) == rows[row]["stars"]

    # The same texts saved with save_to_disk, the label a ClassLabel, and as parquet: the same stream.
    labelled = table.cast_column("stars", ClassLabel(names=["one", "two", "three"]))
    labelled.save_to_disk(tmp_path / "reviews")
    labelled.to_parquet(tmp_path / "reviews.parquet")
    for name, root in (("disk", tmp_path / "reviews"), ("parquet", tmp_path / "reviews.parquet")):
        again = prepared(tmp_path, root, name=name, adapt_per_class=2,
                         hf={"input": "sentence", "label": "stars", "domain": "site", "domains": ["news", "web", "mail"]})
        assert again.class_names == ["one", "two", "three"]
        assert streamed(again).keys() == got.keys()
        assert all({k: (s["txt"], s["cls"]) for k, s in streamed(again)[key].items()} ==
                   {k: (s["txt"], s["cls"]) for k, s in got[key].items()} for key in got)

    from_json = prepared(tmp_path, tmp_path, name="json", adapt_per_class=2, classes_per_task=3,
                         hf={"format": "json", "input": "sentence", "label": "stars",
                             "data_files": {"train": ["train.jsonl"], "test": ["test.jsonl"]}})
    expected = {s: [(r["sentence"].encode(), r["stars"]) for r in part] for s, part in
                (("train", rows), ("test", rows[:9]))}
    assert_exact(from_json, expected, {1: [0, 1, 2]})


def test_bad_input_is_named(tmp_path):
    rng = np.random.default_rng(3)
    images, labels = image_rows(rng, 12, 2)
    images[5] = b"\x89PNG\r\n\x1a\n truncated"
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"]), "score": Value("float32")})
    table = Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "label": labels,
                               "score": [0.5] * 12}, features=features)
    table.save_to_disk(tmp_path / "disk")
    root = tmp_path / "disk"

    with pytest.raises(SourceError, match=r"no column 'lbl' in split 'train'; its columns: image, label, score"):
        prepared(tmp_path, root, hf={"label": "lbl"})
    with pytest.raises(SourceError, match=r"column 'score' .* holds Value\(float32\), not class labels"):
        prepared(tmp_path, root, hf={"label": "score"})
    with pytest.raises(SourceError, match=r"no split 'validation'; its splits: train"):
        prepared(tmp_path, root, hf={"test_split": "validation"})
    with pytest.raises(SourceError, match=r"never downloads a hub dataset"):
        prepared(tmp_path, "someone/some-dataset")
    with pytest.raises(SourceError, match=r"\[train row 5\]: unreadable or truncated image"):
        prepared(tmp_path, root, adapt_per_class=2, classes_per_task=1)
    manifest = prepared(tmp_path, root, adapt_per_class=2, classes_per_task=1, skip_corrupt=True)
    assert [s["sample"] for s in manifest.skipped] == [f"{root} [train row 5]"]
    assert sum(t.splits["train"].count + t.splits["test"].count for t in manifest.tasks) == 11
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["skipped"] == manifest.skipped
