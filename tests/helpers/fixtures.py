"""Small datasets laid out exactly like the real ones (docs/benchmarks.md, "The streams"), for the readers.

Each builder writes its files under ``root`` and returns what a test needs to check the result
(the source pixels or texts, by the key the sample will carry).
"""

from __future__ import annotations

import csv
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

# -- CIFAR: Python 2 pickles ---------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote: byte strings as (SHORT_)BINSTRING, numpy under its
    old module name. Python 3 would write bytes as _codecs.encode calls and str keys, which the
    real files never contain."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        if getattr(obj, "__module__", "") == "numpy._core.multiarray":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n" + (name or obj.__name__).encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def py2_pickle(obj, path: Path) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> dict:
    """``cifar-10-batches-py/``; returns {(file name, row): (HWC pixels, label)}."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    py2_pickle({b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}, base / "batches.meta")
    expected = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(i % 10) for i in range(n)]
        py2_pickle({b"batch_label": f"{name}".encode(), b"labels": labels, b"data": data,
                    b"filenames": [f"img_{i}.png".encode() for i in range(n)]}, base / name)
        for row in range(n):
            expected[(name, row)] = (data[row].reshape(3, 32, 32).transpose(1, 2, 0), labels[row])
    (base / "readme.html").write_text("<html></html>")
    return expected


def cifar100(root: Path, train: int = 300, test: int = 100, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    py2_pickle({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}, base / "meta")
    for name, n in (("train", train), ("test", test)):
        py2_pickle({b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                    b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [i % 20 for i in range(n)],
                    b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}, base / name)


# -- TinyImageNet: JPEGs, some grayscale ---------------------------------------------------------

TINY_WNIDS = ["n09999999", "n01443537", "n05555555"]  # deliberately not in sorted order


def tinyimagenet(root: Path, per_class: int = 6, val_per_class: int = 3, seed: int = 0) -> dict:
    """``tiny-imagenet-200/``; returns {file path: label}. The first image of class 1 is grayscale."""
    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "test" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}, other name\n" for w in TINY_WNIDS)
                                    + "n00000001\tunused synset\n")
    labels = {}
    for label, wnid in enumerate(TINY_WNIDS):
        images = base / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for k in range(per_class):
            path = images / f"{wnid}_{k}.JPEG"
            _jpeg(path, rng, grayscale=(label == 1 and k == 0))
            labels[path] = label
            boxes.append(f"{wnid}_{k}.JPEG\t0\t0\t63\t63")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    annotations = []
    for i in range(val_per_class * len(TINY_WNIDS)):
        wnid = TINY_WNIDS[i % len(TINY_WNIDS)]
        path = base / "val" / "images" / f"val_{i}.JPEG"
        _jpeg(path, rng)
        labels[path] = TINY_WNIDS.index(wnid)
        annotations.append(f"val_{i}.JPEG\t{wnid}\t1\t2\t60\t61")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    _jpeg(base / "test" / "images" / "test_0.JPEG", rng)  # unlabelled: must be ignored
    return labels


def _jpeg(path: Path, rng, grayscale: bool = False) -> None:
    shape = (64, 64) if grayscale else (64, 64, 3)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path, format="JPEG", quality=90)


# -- FMoW: metadata CSV, country mapping, PNGs ---------------------------------------------------

FMOW_COUNTRIES = {"USA": "Americas", "FRA": "Europe", "KEN": "Africa", "CHN": "Asia", "AUS": "Oceania"}
# First appearance in the metadata defines WILDS's region numbers: Asia 0, Europe 1, Americas 2,
# Africa 3, Oceania 4, Other 5 (XKX is missing from the mapping). The paper's order 1,3,0,4,2,5 is
# therefore Europe, Africa, Asia, Oceania, Americas, Other.
FMOW_APPEARANCE = ["CHN", "FRA", "USA", "KEN", "AUS", "XKX"]


def fmow(root: Path, seed: int = 0) -> list[dict]:
    """``fmow_v1.1/``; returns the metadata rows (with their image index) as written."""
    rng = np.random.default_rng(seed)
    base = root / "fmow_v1.1"
    (base / "images").mkdir(parents=True)
    with open(base / "country_code_mapping.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "alpha-2", "alpha-3", "region"])
        for code, region in FMOW_COUNTRIES.items():
            writer.writerow([f"country {code}", code[:2], code, region])
    rows = []
    # Per country: WILDS train rows, id_val rows, a val and a train row after 2012 (outside WILDS's
    # train and id_val), and a test row.
    for country in FMOW_APPEARANCE:
        for split, year, category in (("train", 2010, "airport"), ("train", 2011, "zoo"), ("train", 2012, "airport"),
                                      ("train", 2012, "zoo"), ("val", 2011, "airport"), ("val", 2012, "zoo"),
                                      ("val", 2014, "dam"), ("test", 2012, "dam"), ("train", 2014, "dam")):
            rows.append({"split": split, "country_code": country, "year": year, "category": category})
    rows += [{"split": "seq", "country_code": "USA", "year": 2016, "category": "airport"}] * 2  # seq rows last
    with open(base / "rgb_metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "img_filename", "img_path", "spatial_reference", "epsg", "category", "visible",
                         "img_width", "img_height", "country_code", "cloud_cover", "timestamp", "lat", "lon"])
        for i, row in enumerate(rows):
            timestamp = f"{row['year']}-03-0{1 + i % 9}T10:20:30.123Z"
            writer.writerow([row["split"], f"{row['category']}_{i}_rgb.jpg", f"train/{row['category']}/x",
                             "PROJCS[\"WGS 84\"]", "EPSG:4326", row["category"], "True", 16, 16,
                             row["country_code"], 0, timestamp, 1.5, 2.5])
            row["index"] = i
            Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(
                base / "images" / f"rgb_img_{i}.png")
    return rows


# -- Text: Zhang et al. CSVs and VADER ground truth ----------------------------------------------

ZHANG_FOLDERS = {
    "yelp": ("yelp_review_full_csv", 5, 0),
    "amazon": ("amazon_review_full_csv", 5, 1),
    "ag_news": ("ag_news_csv", 4, 1),
    "dbpedia": ("dbpedia_csv", 14, 1),
    "yahoo": ("yahoo_answers_csv", 10, 2),
}


def zhang_csvs(root: Path, rows: int = 12) -> dict:
    """The five folders; every field quoted, "" inside fields, literal \\n. Returns
    {(dataset, split, line): (label 1-based, fields)}."""
    written = {}
    for name, (folder, labels, extra_fields) in ZHANG_FOLDERS.items():
        base = root / folder
        base.mkdir(parents=True)
        if name in ("ag_news", "dbpedia", "yahoo"):
            (base / "classes.txt").write_text("".join(f"{name}-class-{i}\n" for i in range(labels)))
        (base / "readme.txt").write_text("readme")
        for split in ("train", "test"):
            with open(base / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, quoting=csv.QUOTE_ALL)
                for i in range(rows):
                    label = 1 + i % labels
                    body = f'{name} {split} {i}: she said "hi"\\nthen left'
                    fields = [f"Title {i}"] * (1 if extra_fields else 0) + [body] + [f"answer {i}"] * (extra_fields == 2)
                    writer.writerow([str(label)] + fields)
                    written[(name, split, i + 1)] = (label, fields)
    return written


def sentiment(root: Path) -> dict:
    """Two VADER domains; returns {(domain, line): (valence, text)}; includes a zero and a bad byte."""
    root.mkdir(parents=True, exist_ok=True)
    lines = {
        "tweets": [(2.1, "I love this so much :)"), (-1.5, "worst day\tever"), (0.0, "meh"), (3.0, "great"),
                   (-2.2, "awful"), (1.1, "nice"), (-0.4, "not good"), (2.5, "fantastic"), (-3.1, "terrible"),
                   (0.7, "okay-ish good"), (-1.0, "bad"), (1.9, "lovely")],
        "movieReviewSnippets": [(1.2, "a fine film"), (-2.0, "a dull mess"), (2.8, "a triumph"), (-1.1, "tedious"),
                                (0.5, "watchable"), (-0.9, "weak"), (1.7, "moving"), (-2.6, "unbearable"),
                                (2.2, "brilliant"), (-1.8, "clumsy")],
    }
    written = {}
    for domain, entries in lines.items():
        data = b""
        for i, (valence, text) in enumerate(entries, start=1):
            raw = text.encode("utf-8") + (b" caf\xe9" if i == 2 else b"")  # a Latin-1 byte, as in the real files
            data += f"{i}_{domain}\t{valence}\t".encode() + raw + b"\n"
            written[(domain, i)] = (valence, raw.decode("utf-8", errors="replace"))
        (root / f"{domain}_GroundTruth.txt").write_bytes(data)
    return written


# -- A tiny BERT-style encoder, saved like any local Hugging Face model ------------------------


def tiny_bert(directory: Path) -> Path:
    """A 2-layer, 32-wide BERT with a WordPiece vocabulary of letters and a few words: a real
    Hugging Face model directory (config, safetensors weights, tokenizer), built offline."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "good", "bad", "great", "awful", "love", "film"]
    vocab = words + list(letters) + [f"##{c}" for c in letters] + list(":)-.,!?'\"")
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    return directory


# -- An image folder of photographs, for `crdist bench data --folder` -----------------------------

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def photo_folder(root: Path, classes: int = 4, per_class: int = 700, size: int = 224, test_per_class: int = 0,
                 seed: int = 0) -> Path:
    """``root/train/<class>/<n>.jpg`` (and ``root/test/…``): ``size``-pixel JPEGs (quality 90), class
    k cut at random places, scales and flips from scikit-image's photograph PHOTOS[k], so that
    each file decodes like a real photo (detail, noise, JPEG blocks), not like flat test colours."""
    import skimage.data

    rng = np.random.default_rng(seed)
    for k in range(classes):
        photo = Image.fromarray(getattr(skimage.data, PHOTOS[k % len(PHOTOS)])()).convert("RGB")
        for split, count in (("train", per_class), ("test", test_per_class)):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                side = int(rng.integers(min(photo.size) // 3, min(photo.size) + 1))
                x, y = (int(rng.integers(0, photo.size[i] - side + 1)) for i in (0, 1))
                crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                crop.save(folder / f"{n:05d}.jpg", format="JPEG", quality=90)
    return root
