"""Every benchmark reader on files laid out exactly like the real dataset: task and class
assignment, counts, and samples that stream back equal to the source pixels or text."""

from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from crdist.data.manifest import Manifest
from crdist.data.prepare import PrepareError, prepare
from crdist.data.samples import ImageDecoder, decode_pixels
from crdist.data.sources.base import SourceError
from crdist.data.stream import read_split
from tests.helpers import fixtures, study


def prepared(tmp_path, benchmark, root, **options) -> Manifest:
    data = study(data={"benchmark": benchmark, "root": str(root), "shards": str(tmp_path / "shards"), **options}).data
    return prepare(data, log=lambda line: None)


def samples_of(manifest: Manifest, task: int, split: str) -> dict:
    urls = [manifest.url(s) for s in manifest.split(task, split).shards]
    return {s["__key__"]: s for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())}


def test_seq_cifar10_from_python2_pickles(tmp_path):
    expected = fixtures.cifar10(tmp_path / "raw")
    manifest = prepared(tmp_path, "seq-cifar10", tmp_path / "raw", adapt_per_class=3)
    assert [t.classes for t in manifest.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert manifest.class_names[:2] == ["airplane", "automobile"]
    # 5 batches × 20 rows: 10 train images per class; the test batch: 2 per class
    assert [(t.splits["train"].count, t.splits["test"].count, t.splits["adapt"].count) for t in manifest.tasks] == [
        (20, 4, 6)] * 5
    for task in manifest.tasks:
        for split in ("train", "test"):
            for key, sample in samples_of(manifest, task.index, split).items():
                name, row = key.split("-", 2)[2].rsplit("-", 1)
                pixels, label = expected[(name, int(row))]
                assert int(sample["cls"]) == label and label in task.classes
                np.testing.assert_array_equal(decode_pixels(sample, 3), pixels)
                assert (split == "test") == (name == "test_batch")


def test_seq_cifar100_twenty_by_five_and_ten_by_ten(tmp_path):
    fixtures.cifar100(tmp_path / "raw")
    manifest = prepared(tmp_path, "seq-cifar100", tmp_path / "raw", adapt_per_class=2)
    assert len(manifest.tasks) == 20 and manifest.tasks[3].classes == [15, 16, 17, 18, 19]
    ten = prepared(tmp_path / "ten", "seq-cifar100", tmp_path / "raw", adapt_per_class=2, classes_per_task=10)
    assert len(ten.tasks) == 10 and ten.tasks[1].classes == list(range(10, 20))
    assert ten.tasks[1].splits["train"].per_class == {str(c): 3 for c in range(10, 20)}


def test_seq_tinyimagenet_in_wnids_order_with_grayscale_jpegs(tmp_path):
    labels = fixtures.tinyimagenet(tmp_path / "raw")
    manifest = prepared(tmp_path, "seq-tinyimagenet", tmp_path / "raw", classes_per_task=1, adapt_per_class=2)
    assert manifest.class_names[0] == f"thing {fixtures.TINY_WNIDS[0]}"  # wnids.txt order, not sorted
    assert [(t.splits["train"].count, t.splits["test"].count) for t in manifest.tasks] == [(6, 3)] * 3
    assert manifest.image.channels == 3 and (manifest.image.height, manifest.image.width) == (64, 64)
    by_name = {p.name.split(".")[0]: (p, label) for p, label in labels.items()}
    for task in manifest.tasks:
        for split in ("train", "test"):
            for key, sample in samples_of(manifest, task.index, split).items():
                path, label = by_name[key.split("-", 3)[3]]
                assert int(sample["cls"]) == label == task.classes[0]
                assert sample["jpg"] == path.read_bytes()  # stored as the original file
                pixels = decode_pixels(sample, 3)
                np.testing.assert_array_equal(pixels, np.asarray(Image.open(path).convert("RGB")))
    gray = decode_pixels(samples_of(manifest, 2, "train")[f"02-train-train-{fixtures.TINY_WNIDS[1]}_0"], 3)
    assert gray.shape == (64, 64, 3) and (gray[..., 0] == gray[..., 1]).all()


def test_fmow_by_region_in_the_papers_order_with_other_for_unmapped_countries(tmp_path):
    rows = fixtures.fmow(tmp_path / "raw")
    manifest = prepared(tmp_path, "fmow", tmp_path / "raw", adapt_per_class=2)
    assert [t.name for t in manifest.tasks] == ["Europe", "Africa", "Asia", "Oceania", "Americas", "Other"]
    assert len(manifest.class_names) == 62 and manifest.class_names[0] == "airport"
    region = {code: region for code, region in fixtures.FMOW_COUNTRIES.items()} | {"XKX": "Other"}
    for task in manifest.tasks:
        # WILDS train (train rows before 2013) and id_val (val rows before 2013) of this region only
        want = {"train": [r for r in rows if r["split"] == "train" and r["year"] < 2013
                          and region[r["country_code"]] == task.name],
                "test": [r for r in rows if r["split"] == "val" and r["year"] < 2013
                         and region[r["country_code"]] == task.name]}
        for split, expected in want.items():
            got = samples_of(manifest, task.index, split)
            assert sorted(int(k.rsplit("-", 1)[1]) for k in got) == [r["index"] for r in expected]
            for key, sample in got.items():
                index = int(key.rsplit("-", 1)[1])
                image = tmp_path / "raw" / "fmow_v1.1" / "images" / f"rgb_img_{index}.png"
                assert sample["png"] == image.read_bytes()
                assert manifest.class_names[int(sample["cls"])] == rows[index]["category"]


def test_fmow_by_year(tmp_path):
    fixtures.fmow(tmp_path / "raw")
    manifest = prepared(tmp_path, "fmow", tmp_path / "raw", adapt_per_class=2,
                        fmow={"by": "year", "year_bounds": [2012, 2014]})
    assert [t.name for t in manifest.tasks] == ["≤2011", "2012–2013", "≥2014"]
    # ≤2011: train rows of 2010 and 2011 (2 per country), val rows of 2011 (1 per country)
    assert (manifest.tasks[0].splits["train"].count, manifest.tasks[0].splits["test"].count) == (12, 6)


def test_text5_order1_with_quoted_fields_and_label_offsets(tmp_path):
    written = fixtures.zhang_csvs(tmp_path / "raw", rows=12)
    manifest = prepared(tmp_path, "text-5", tmp_path / "raw", adapt_per_class=2,
                        text={"order": 1, "train_per_task": 10, "test_per_task": 6})
    assert manifest.modality == "text" and manifest.image is None
    assert [t.name for t in manifest.tasks] == ["yelp", "ag_news", "dbpedia", "amazon", "yahoo"]
    assert len(manifest.class_names) == 33 and manifest.class_names[5] == "ag_news-class-0"
    offsets = {"yelp": 0, "ag_news": 5, "dbpedia": 9, "amazon": 0, "yahoo": 23}
    for task in manifest.tasks:
        assert (task.splits["train"].count, task.splits["test"].count) == (10, 6)  # sampled per dataset
        for split in ("train", "test"):
            for key, sample in samples_of(manifest, task.index, split).items():
                line = int(key.rsplit("-", 1)[1])
                label, fields = written[(task.name, split, line)]
                assert int(sample["cls"]) == offsets[task.name] + label - 1
                body = " ".join(f.replace("\\n", " ") for f in fields[1:]) if task.name != "yelp" else ""
                text = f"{fields[0]}. {body}" if task.name != "yelp" else fields[0].replace("\\n", " ")
                assert sample["txt"].decode() == text
                assert '"hi"' in text and "\\n" not in text


def test_sentiment_domains_binary_by_sign_with_zeros_dropped(tmp_path):
    written = fixtures.sentiment(tmp_path / "raw")
    manifest = prepared(tmp_path, "sentiment-domains", tmp_path / "raw", adapt_per_class=2, test_fraction=0.25)
    assert [t.name for t in manifest.tasks] == ["tweets", "movieReviewSnippets"]
    assert manifest.class_names == ["negative", "positive"]
    tweets = {**samples_of(manifest, 1, "train"), **samples_of(manifest, 1, "test")}
    assert len(tweets) == 11  # 12 lines, one rated 0
    for key, sample in tweets.items():
        valence, text = written[("tweets", int(key.rsplit("-", 1)[1]))]
        assert int(sample["cls"]) == int(valence > 0) and sample["txt"].decode() == text


def test_the_real_fashion_mnist_from_debian(tmp_path):
    root = Path("/usr/share/datasets/fashion-mnist")
    assert root.is_dir(), "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
    manifest = prepared(tmp_path, "seq-fashion-mnist", root)
    assert len(manifest.tasks) == 5
    for task in manifest.tasks:
        assert (task.splits["train"].count, task.splits["test"].count) == (12_000, 2_000)
        assert task.splits["train"].per_class == {str(c): 6_000 for c in task.classes}
    assert manifest.image.mean[0] == pytest.approx(0.2860, abs=1e-3)  # Fashion-MNIST's known mean

    # A run sized to a small machine keeps a seeded subset of each class: rows of the full splits.
    small = prepared(tmp_path / "small", "seq-fashion-mnist", root, train_per_class=200, test_per_class=50,
                     tasks=2)
    for task in small.tasks:
        assert task.splits["train"].per_class == {str(c): 200 for c in task.classes}
        assert task.splits["test"].per_class == {str(c): 50 for c in task.classes}
        for split in ("train", "test"):
            assert set(samples_of(small, task.index, split)) <= set(samples_of(manifest, task.index, split))
        rows = {split: {key.split("-", 2)[2] for key in samples_of(small, task.index, split)}
                for split in ("train", "adapt")}  # keys are <task>-<split>-<source row>
        assert len(rows["adapt"]) == 2 * 30 and rows["adapt"] <= rows["train"]


def test_shards_stream_through_a_pipe_url_with_only_the_manifest_at_hand(tmp_path, digits_shards):
    # As with object storage: the shards stay where they are, the driver holds just the manifest.
    local = tmp_path / "manifest-only"
    local.mkdir()
    (local / "manifest.json").write_bytes((digits_shards / "manifest.json").read_bytes())
    template = f"pipe:cat {digits_shards}/{{path}}"
    data = study(data={"shards": str(local), "stream_url": template}).data
    lines = []
    manifest = prepare(data, log=lines.append)
    assert lines == [f"streaming shards through {template} (manifest {local / 'manifest.json'})"]
    decode = ImageDecoder(1, manifest.image.mean, manifest.image.std)
    piped = read_split(manifest, 2, "test", decode, url_template=data.stream_url)
    direct = read_split(Manifest.load(digits_shards), 2, "test", decode)
    assert (direct[0] == piped[0]).all() and (direct[1] == piped[1]).all()


# -- bad input: a clear error that names the file, and a non-zero exit -----------------------------


def test_a_corrupt_image_names_the_file_or_is_skipped_and_listed(tmp_path):
    fixtures.tinyimagenet(tmp_path / "raw")
    bad = tmp_path / "raw" / "tiny-imagenet-200" / "train" / fixtures.TINY_WNIDS[2] / "images" / f"{fixtures.TINY_WNIDS[2]}_3.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    with pytest.raises(SourceError, match=rf"{bad}: unreadable or truncated image"):
        prepared(tmp_path, "seq-tinyimagenet", tmp_path / "raw", classes_per_task=1, adapt_per_class=2)
    manifest = prepared(tmp_path / "skip", "seq-tinyimagenet", tmp_path / "raw", classes_per_task=1,
                        adapt_per_class=2, skip_corrupt=True)
    assert [s["sample"] for s in manifest.skipped] == [str(bad)]
    assert manifest.tasks[2].splits["train"].count + manifest.tasks[2].splits["adapt"].count < 6 + 2


def test_a_bad_csv_line_names_the_file_and_line(tmp_path):
    fixtures.zhang_csvs(tmp_path / "raw", rows=4)
    path = tmp_path / "raw" / "ag_news_csv" / "train.csv"
    lines = path.read_text().splitlines()
    lines[2] = '"7","a label out of range","body"'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=rf"{path}: line 3: label 7 outside 1..4"):
        prepared(tmp_path, "text-5", tmp_path / "raw", text={"train_per_task": 10, "test_per_task": 6})
    lines[2] = '"2","an unterminated "quote, "body"'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=rf"{path}: line 3: malformed CSV"):
        prepared(tmp_path, "text-5", tmp_path / "raw", text={"train_per_task": 10, "test_per_task": 6})


def test_missing_files_and_bad_pickles_name_the_file(tmp_path):
    with pytest.raises(SourceError, match=r"cifar-10-batches-py: directory missing"):
        prepared(tmp_path, "seq-cifar10", tmp_path / "nowhere")
    fixtures.cifar10(tmp_path / "raw")
    batch = tmp_path / "raw" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"\x80\x02cos\nsystem\n(S'echo owned'\ntR.")  # a pickle that would run a command
    with pytest.raises(SourceError, match=rf"{batch}: not a readable CIFAR pickle .*refusing to load os.system"):
        prepared(tmp_path, "seq-cifar10", tmp_path / "raw")


def test_the_cli_exits_non_zero_naming_the_file(tmp_path):
    import subprocess
    import sys

    fixtures.sentiment(tmp_path / "raw")
    path = tmp_path / "raw" / "tweets_GroundTruth.txt"
    path.write_bytes(path.read_bytes() + b"99_tweets\tnot-a-number\ttext\n")
    result = subprocess.run([sys.executable, "-m", "crdist", "prepare", "sentiment-domains", "--root",
                             str(tmp_path / "raw"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 1
    assert f"{path}: line 13: valence 'not-a-number' is not a number" in result.stderr
    assert not (tmp_path / "out").exists()


def test_imagefolder_and_csv_with_tasks_named_by_class(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "folders"
    rows = ["path,label,split"]
    for split, n in (("train", 4), ("test", 2)):
        for name in ("cat", "dog", "car", "bus"):
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                path = root / split / name / f"{name}.{k}.png"  # a dot in the stem, as real files have
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
                rows.append(f"{path.relative_to(root)},{name},{split}")
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    tasks = [["dog", "cat"], ["bus"]]
    for benchmark, data_root in (("imagefolder", root), ("csv", root / "images.csv")):
        manifest = prepared(tmp_path / benchmark, benchmark, data_root, task_classes=tasks, adapt_per_class=2)
        names = manifest.class_names
        assert [[names[c] for c in t.classes] for t in manifest.tasks] == tasks
        assert [(t.splits["train"].count, t.splits["test"].count) for t in manifest.tasks] == [(8, 4), (4, 2)]
        for key, sample in samples_of(manifest, 1, "test").items():
            name = names[int(sample["cls"])]
            matches = [p for p in (root / "test" / name).iterdir() if p.read_bytes() == sample["png"]]
            assert len(matches) == 1  # stored byte for byte, under its own class
        assert manifest.image.channels == 3


def test_an_imagefolder_of_grayscale_images_streams_one_channel_until_one_image_has_colour(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "gray"
    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(root / "train" / name / f"{k}.png")
    manifest = prepared(tmp_path / "one", "imagefolder", root, adapt_per_class=2, test_fraction=0.34)
    assert manifest.image.channels == 1 and len(manifest.image.mean) == 1
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / "train" / "a" / "9.png")
    assert prepared(tmp_path / "three", "imagefolder", root, adapt_per_class=2, test_fraction=0.34).image.channels == 3


# -- no silent changes: a stream is what was asked for, or a clear error ------------------------------


def test_more_classes_per_task_than_the_source_has_is_the_same_clear_error_with_or_without_tasks(tmp_path):
    fixtures.tinyimagenet(tmp_path / "raw")  # 3 classes; the default is 20 per task
    message = r"1 tasks × 20 classes need 20 classes; the stream has 3"
    with pytest.raises(PrepareError, match=message):
        prepared(tmp_path, "seq-tinyimagenet", tmp_path / "raw")
    with pytest.raises(PrepareError, match=message):
        prepared(tmp_path, "seq-tinyimagenet", tmp_path / "raw", tasks=1)


def test_a_domain_that_does_not_exist_or_has_no_rows_is_named_never_dropped(tmp_path):
    fixtures.fmow(tmp_path / "raw")
    with pytest.raises(SourceError, match=r"data.fmow.regions names 'Asai', which FMoW does not have; its regions "
                                          r"are: .*Asia"):
        prepared(tmp_path, "fmow", tmp_path / "raw", fmow={"regions": ["Europe", "Asai", "Africa"]})
    with pytest.raises(SourceError, match=r"year bin\(s\) ≤2004 have no train or val rows"):
        prepared(tmp_path, "fmow", tmp_path / "raw", fmow={"by": "year", "year_bounds": [2005, 2012]})

    fixtures.zhang_csvs(tmp_path / "text", rows=4)
    with pytest.raises(SourceError, match=r"data.tasks=7, but text-5 has 5 tasks \(yelp, ag_news, dbpedia, amazon"):
        prepared(tmp_path, "text-5", tmp_path / "text", tasks=7)

    fixtures.sentiment(tmp_path / "vader")
    with pytest.raises(SourceError, match=r"names 'twets', which .* does not have .*its domains are: "
                                          r"movieReviewSnippets, tweets"):
        prepared(tmp_path, "sentiment-domains", tmp_path / "vader", text={"domains": ["twets"]})
    # A domain whose every sentence is rated 0 has no samples: an error, not a task fewer.
    (tmp_path / "vader" / "quiet_GroundTruth.txt").write_text("1\t0.0\tmeh\n2\t0\tfine I guess\n")
    with pytest.raises(PrepareError, match=r"task 3 \('quiet'\) would be empty"):
        prepared(tmp_path, "sentiment-domains", tmp_path / "vader")


def test_the_cli_says_what_is_wrong_without_a_traceback(tmp_path):
    import subprocess
    import sys

    fixtures.cifar10(tmp_path / "raw")
    result = subprocess.run([sys.executable, "-m", "crdist", "prepare", "seq-cifar10", "--root", str(tmp_path / "raw"),
                             "--out", str(tmp_path / "out"), "--set", "classes_per_task=11"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "crdist: error: seq-cifar10: 1 tasks × 11 classes need 11 classes; the stream has 10" in result.stderr


def test_reuse_refuses_changed_raw_files_and_a_shard_changed_in_place(tmp_path):
    fixtures.sentiment(tmp_path / "raw")
    first = prepared(tmp_path, "sentiment-domains", tmp_path / "raw", adapt_per_class=2, test_fraction=0.25)
    again = prepared(tmp_path, "sentiment-domains", tmp_path / "raw", adapt_per_class=2, test_fraction=0.25)
    assert again == first

    # A shard edited in place, its size unchanged: reuse re-hashes it (its modification time moved).
    shard = first.root / first.tasks[0].splits["train"].shards[0].path
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(PrepareError, match=rf"{shard}: sha256 differs from the manifest"):
        prepared(tmp_path, "sentiment-domains", tmp_path / "raw", adapt_per_class=2, test_fraction=0.25)

    # A raw file edited since the preparation: the shards no longer match the data.
    fixtures.sentiment(tmp_path / "raw2")
    prepared(tmp_path / "b", "sentiment-domains", tmp_path / "raw2", adapt_per_class=2, test_fraction=0.25)
    tweets = tmp_path / "raw2" / "tweets_GroundTruth.txt"
    tweets.write_bytes(tweets.read_bytes().replace(b"great", b"grand"))
    with pytest.raises(PrepareError, match=rf"prepared from raw files that have changed since .*\n  {tweets}: "):
        prepared(tmp_path / "b", "sentiment-domains", tmp_path / "raw2", adapt_per_class=2, test_fraction=0.25)


def test_verify_pointed_at_a_run_directory_checks_the_shards_it_names(tmp_path, digits_shards):
    import subprocess
    import sys

    from crdist.orchestrate.claim import admit
    from crdist.rundir import RunDir

    run = RunDir(tmp_path / "runs" / "demo")
    admit(run, study(data={"shards": str(digits_shards)}))
    Manifest.load(digits_shards).save(run.root)  # as the driver keeps a copy
    result = subprocess.run([sys.executable, "-m", "crdist", "prepare", "--verify", str(run.root)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{run.root} is a run directory" in result.stdout and f"Its shards are in {digits_shards}" in result.stdout
    assert f"shards match {digits_shards / 'manifest.json'}" in result.stdout


def test_skipping_an_unreadable_image_refills_the_adaptation_subset(tmp_path):
    fixtures.tinyimagenet(tmp_path / "raw")
    options = {"classes_per_task": 1, "adapt_per_class": 2}
    clean = prepared(tmp_path / "clean", "seq-tinyimagenet", tmp_path / "raw", **options)
    drawn = sorted(samples_of(clean, 3, "adapt"))[0]  # an image the adaptation subset holds
    bad = tmp_path / "raw" / "tiny-imagenet-200" / "train" / fixtures.TINY_WNIDS[2] / "images" / (
        drawn.split("-train-", 1)[1] + ".JPEG")
    bad.write_bytes(bad.read_bytes()[:300])

    manifest = prepared(tmp_path / "skip", "seq-tinyimagenet", tmp_path / "raw", skip_corrupt=True, **options)
    assert [s["sample"] for s in manifest.skipped] == [str(bad)]
    adapt, train = samples_of(manifest, 3, "adapt"), samples_of(manifest, 3, "train")
    assert len(adapt) == 2 and drawn not in adapt  # refilled from the readable train images
    assert {k.split("-", 2)[2] for k in adapt} <= {k.split("-", 2)[2] for k in train}
    assert len(train) == 5
    # The other tasks draw exactly what they drew without the bad image.
    for task in (1, 2):
        assert samples_of(manifest, task, "adapt").keys() == samples_of(clean, task, "adapt").keys()


def test_zhang_text_joins_only_the_fields_that_are_there(tmp_path):
    fixtures.zhang_csvs(tmp_path / "raw", rows=4)
    path = tmp_path / "raw" / "ag_news_csv" / "train.csv"
    lines = path.read_text().splitlines()
    lines[0], lines[1] = '"1","","a body without a title"', '"2","A title without a body?",""'
    path.write_text("\n".join(lines) + "\n")
    manifest = prepared(tmp_path, "text-5", tmp_path / "raw", adapt_per_class=2,
                        text={"train_per_task": 10, "test_per_task": 6})
    task = next(t for t in manifest.tasks if t.name == "ag_news")
    texts = {int(k.rsplit("-", 1)[1]): s["txt"].decode() for k, s in samples_of(manifest, task.index, "train").items()}
    assert texts[1] == "a body without a title"
    assert texts[2] == "A title without a body?"
