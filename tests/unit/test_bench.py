"""The benchmarks' own arithmetic and fairness: interval unions, the steady rate, and the raw-file
loader reading exactly the samples the stream does. (The wall-time split of a real run through Ray
is tested in test_end_to_end.py, on its run.)"""

import pytest
import torch

from crdist.bench import overhead
from crdist.bench.data import _raw_files, _write_image_folder
from crdist.bench.train import WARMUP_STEPS, _medians, _steady_rate
from crdist.data.manifest import Manifest
from crdist.data.samples import make_decoder
from crdist.data.stream import read_split
from crdist.models.config import ModelConfig


def test_interval_unions_count_overlaps_once():
    assert overhead._union([(0, 2), (1, 3), (5, 6)]) == 4
    assert overhead._union([(0, 10), (2, 3)]) == 10


def test_ray_trains_own_cost_is_taken_out_of_the_start_and_of_the_idle_wall_time_only():
    # Job a starts for 10 s (its last 4 s Ray Train's own), computes 5 s; job b waits behind it and
    # its Ray Train start overlaps a's compute by 1 s.
    a = overhead.TrainSpan("sgd/1", "sgd", submitted=0, entered=10, first_step=12, compute=5, finished=18)
    b = overhead.TrainSpan("sgd/2", "sgd", submitted=1, entered=20, first_step=21, compute=5, finished=27)
    figures = {"ray_train_fixed_seconds": 4.0, "bare_start_seconds": 3.0, "job_ready_seconds_min": 12.0,
               "wall_seconds": 40.0, "train_compute_seconds": 10.0, "eval_seconds": 10.0}
    out = overhead.without_ray_train([a, b], figures)
    assert out["ray_train_on_wall_seconds"] == 4 + 3  # a's [6, 10]; b's [16, 20] less a's compute until 17
    assert out["wall_over_compute_without_ray_train"] == pytest.approx((40 - 7) / 20)
    assert out["job_ready_over_bare_without_ray_train"] == pytest.approx((12 - 4) / 3)
    assert overhead.without_ray_train([a, b], {**figures, "ray_train_fixed_seconds": None}) == {}
    # b on the workers a's job kept: no Ray Train start of its own to take out.
    kept = overhead.TrainSpan("sgd/2", "sgd", submitted=18, entered=18, first_step=19, compute=5, finished=25,
                              fresh=False)
    assert overhead.without_ray_train([a, kept], figures)["ray_train_on_wall_seconds"] == 4


def test_the_steady_rate_leaves_out_the_warm_up():
    # 1 s per step during warm-up, 0.1 s after: the rate is the fast one's.
    times, at = [], 0.0
    for step in range(1, WARMUP_STEPS + 21):
        at += 1.0 if step <= WARMUP_STEPS else 0.1
        times.append((step, at))
    assert _steady_rate(times, global_batch=32) == pytest.approx(320.0)


def test_the_raw_file_loader_reads_the_streams_samples(tmp_path, digits_shards):
    manifest = Manifest.load(digits_shards)
    decode = make_decoder(manifest, ModelConfig())
    files = _write_image_folder(manifest, tmp_path)
    stream_inputs, stream_labels = read_split(manifest, 1, "train", decode)
    batches = list(_raw_files(files, decode, batch=len(files), workers=0))
    (raw_inputs, raw_labels), = batches
    # The same multiset of (image, label), in another order.
    key = lambda x, y: sorted(zip(x.flatten(1).tolist(), y.tolist()))  # noqa: E731
    assert key(raw_inputs, raw_labels) == key(stream_inputs, stream_labels)
    assert torch.equal(raw_labels.sort().values, stream_labels.sort().values)


def test_bench_train_pairs_each_round_of_the_worker_with_the_hand_loop_of_the_same_round():
    def run(loop, stage, round_, rate):
        own = {"seconds_per_step": 0.001 * round_, "share": 0.01 * round_} if loop == "crdist" else None
        return {"loop": loop, "zero_stage": stage, "round": round_, "samples_per_second": rate,
                "peak_memory_bytes": [10 * round_, 20], "start_memory_bytes": [5, 5 + round_], "own_time": own}

    runs = [run("crdist", 0, 1, 90.0), run("accelerate", 0, 1, 100.0),  # a slow minute: both slow
            run("crdist", 0, 2, 45.0), run("accelerate", 0, 2, 50.0),
            run("crdist", 0, 3, 99.0), run("accelerate", 0, 3, 90.0), run("ddp", None, 1, 120.0)]
    crdist, hand, ddp = _medians(runs, [("crdist", 0), ("accelerate", 0), ("ddp", None)])
    assert crdist["vs_hand_loop"] == pytest.approx(0.9)  # median of 0.9, 0.9, 1.1: not 90 / 90
    assert crdist["vs_hand_loop_range"] == pytest.approx([0.9, 1.1])
    assert (crdist["samples_per_second"], hand["samples_per_second"], ddp["samples_per_second"]) == (90.0, 90.0, 120.0)
    assert crdist["peak_memory_bytes"] == [30, 20] and crdist["start_memory_bytes"] == [5, 6]
    assert "vs_hand_loop" not in hand and "vs_hand_loop" not in ddp
    # The worker's own time: the median over its rounds (1, 2 and 3 ms; 1 %, 2 % and 3 % of a step).
    assert crdist["own_ms_per_step"] == pytest.approx(2.0) and crdist["own_share"] == pytest.approx(0.02)
    assert "own_share" not in hand and "own_share" not in ddp


def test_the_workers_own_time_counts_a_timed_call_inside_another_once():
    import time

    from crdist.bench.train import OwnTime

    class Loop:
        def outer(self):
            time.sleep(0.02)
            return self.inner()

        def inner(self):
            time.sleep(0.03)
            return "done"

    own = OwnTime()
    own._wrap(Loop, "outer")
    own._wrap(Loop, "inner")
    start = time.perf_counter()
    assert Loop().outer() == "done"  # what the wrapped call returns is unchanged
    assert Loop().inner() == "done"
    end = time.perf_counter()
    assert len(own.spans) == 2  # outer (with inner inside it) once, then inner alone
    assert 0.08 <= own.between(start, end) < 0.08 + 0.05
    assert own.between(end, end + 1) == 0  # only the calls that ended in the window
