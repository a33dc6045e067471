"""Every `crdist bench` subcommand, run for real at a tiny size: each finishes, prints its table
and verdicts, and writes figures that hang together. (The figures' arithmetic has unit tests in
tests/unit/test_bench.py; these check that the commands run end to end on real processes, Ray
and DeepSpeed.)"""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SMALL = ["data.tasks=2", "data.shards={shards}"]


def bench(tmp_path, *args, timeout=900):
    command = [sys.executable, "-m", "crdist", "bench", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stdout


def sets(tmp_path, *extra):
    values = [s.format(shards=tmp_path / "shards") for s in SMALL] + list(extra)
    return [x for v in values for x in ("--set", v)]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """`bench resume` with one kill: a finished run directory that `bench overhead` reads too. Tasks
    of 140 steps (several seconds): the bench aims its kill by progress events, which reach
    events.jsonl up to a second late, and a task of a few dozen steps can end before it lands."""
    tmp_path = tmp_path_factory.mktemp("bench-resume")
    out = bench(tmp_path, "resume", "--failures", "1", "--runs-dir", str(tmp_path / "runs"),
                *sets(tmp_path, "train.epochs=20", "evaluate.protocols=[knn]"))
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    return run, out


def test_bench_resume_kills_a_worker_and_loses_at_most_one_checkpoint_interval(resumed_run):
    run, out = resumed_run
    assert "killed rank" in out and "steps redone" in out and "FAIL" not in out
    row = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    last_step, resumed_at, redone = (int(v) for v in row.split()[6:9])  # after "1 lpft task 1 rank 0"
    assert resumed_at <= last_step and redone == last_step - resumed_at <= 10  # checkpoint.every_steps
    assert (run / "report" / "metrics.json").is_file()


def test_bench_overhead_splits_the_wall_time_of_a_finished_run(resumed_run, tmp_path):
    run, _ = resumed_run
    out = bench(tmp_path, "overhead", str(run), "--json", str(tmp_path / "overhead.json"))
    figures = json.loads((tmp_path / "overhead.json").read_text())
    assert figures["train_tasks"] == 2 and figures["eval_jobs"] == 3 * 2  # c_0, c_1, c_2 on 2 tasks
    assert figures["wall_over_compute"] > 0 and figures["wall_over_computing_time"] >= 1
    assert figures["bare_start_seconds"] > 0 and figures["ray_train_fixed_seconds"] > 0
    assert "wall / (train + eval compute)" in out and "wall / (time anything computed)" in out
    assert (run / "report" / "timeline.png").stat().st_size > 10_000


def test_bench_train_compares_the_worker_with_the_hand_loop_and_ddp(tmp_path):
    out = bench(tmp_path, "train", "--stages", "0", "--steps", "10", "--repeats", "1",
                "--json", str(tmp_path / "train.json"), *sets(tmp_path))
    figures = json.loads((tmp_path / "train.json").read_text())
    rows = {(r["loop"], r["zero_stage"]): r for r in figures["rows"]}
    assert rows.keys() == {("crdist", 0), ("accelerate", 0), ("ddp", None)}
    crdist, hand = rows[("crdist", 0)], rows[("accelerate", 0)]
    assert all(r["samples_per_second"] > 0 for r in rows.values())
    assert crdist["vs_hand_loop"] == pytest.approx(crdist["samples_per_second"] / hand["samples_per_second"], rel=1e-6)
    assert 0 < crdist["own_share"] < 1
    assert "target crdist / hand loop ≥ 0.95: " in out


def test_bench_data_compares_the_stream_with_raw_files_and_the_training_step(tmp_path):
    out = bench(tmp_path, "data", "--rounds", "2", "--json", str(tmp_path / "data.json"), *sets(tmp_path))
    figures = json.loads((tmp_path / "data.json").read_text())
    rows = figures["rows"]
    assert {(r["loader"], r["loader_workers"]) for r in rows} == {
        *[(kind, w) for kind in ("stream", "stream+cache", "raw files") for w in (0, 1, 2)], ("training step", None)}
    assert all(r["samples_per_second"] > 0 for r in rows)
    for r in rows:  # the stream and the plain loader: the median of their rounds
        if r["loader"] in ("stream", "raw files"):
            assert len(r["rounds"]) == 2 and r["samples_per_second"] == pytest.approx(sum(r["rounds"]) / 2)
    assert set(figures["breakdown_us_per_sample"]) == {"read", "decode", "collate", "hand-over", "transform"}
    assert "target stream ≥ raw files at every loader-worker count, both decoding every epoch: " in out
    assert "target stream ≥ 3 × training step: " in out
    assert "where a sample's time goes" in out


def test_bench_data_on_an_image_folder_of_jpegs(tmp_path):
    from tests.helpers.fixtures import photo_folder

    photo_folder(tmp_path / "photos", classes=2, per_class=40, size=48)
    out = bench(tmp_path, "data", "--folder", str(tmp_path / "photos"), "--image-size", "32", "--rounds", "1",
                "--loader-workers", "0,1", "--set", "train.decoded_cache_mb=0", "--set", "data.adapt_per_class=4",
                "--json", str(tmp_path / "data.json"))
    figures = json.loads((tmp_path / "data.json").read_text())
    assert figures["image_size"] == 32 and "2 tasks" not in out
    assert {(r["loader"], r["loader_workers"]) for r in figures["rows"]} == {
        ("stream", 0), ("stream", 1), ("raw files", 0), ("raw files", 1), ("training step", None)}
    assert "task 1 train split of " in out and " px), batch 16" in out


def test_bench_eval_times_each_protocol_and_the_probe_solvers(tmp_path):
    out = bench(tmp_path, "eval", "--probe-samples", "400", "--probe-dims", "16", "--probe-classes", "4",
                "--json", str(tmp_path / "eval.json"), *sets(tmp_path))
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert [(r["checkpoint"], r["task"]) for r in figures["evaluations"]] == [("c_0", 1), ("c_0", 2)]
    for row in figures["evaluations"]:
        assert set(row["protocol_seconds"]) == {"knn", "linear", "finetune"}
        assert 0 < row["feature_seconds"] <= row["seconds"]
    assert figures["linear_solvers"] and figures["probe_problem"] == [400, 16, 4]
    assert "c_0 × task 2" in out


def test_bench_digest_times_both_hashes_and_a_checkpoint_verification(tmp_path):
    out = bench(tmp_path, "digest", "--gib", "0.05", "--backbone", "small-cnn")
    rates = {line.split("(")[0].strip(): float(line.split()[-1]) for line in out.splitlines()
             if line.startswith(("xxh3_128", "sha256"))}
    assert set(rates) == {"xxh3_128", "sha256"} and all(rate > 0 for rate in rates.values())
    assert "verify every file (newest sound checkpoint)" in out and "verification adds" in out
