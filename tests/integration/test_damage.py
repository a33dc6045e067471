"""Files that come back different from how they were written: a study killed for real (or stopped
by a full disk), files of its run directory damaged (a flipped byte, a truncation, a deletion), and
the same command run again. Nothing is trained or evaluated from a damaged file: each is named on one line
and journaled, what it came from is done again, and the matrices end byte-identical to a run that
nothing happened to."""

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid

import pytest
import torch

from crdist.bench.faults import checkpoint_on_disk, wait_for, worker_pid
from crdist.models.weights import load_weights
from crdist.train.checkpoint import TaskCheckpoints
from tests.helpers import ROOT
from tests.helpers.studies import finish, journal, start, wait_until_gone

# ewc: weights and a method state (Fisher, anchor) per rank carried from task to task. 60 steps a
# task, a checkpoint every 5: a kill lands mid-task with checkpoints behind it.
DAMAGE = ["train.methods=[ewc]", "train.max_steps=60", "checkpoint.every_steps=5", "evaluate.protocols=[knn]"]


def flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40  # in a float32 near the end: the kind of change a failing disk makes
    path.write_bytes(bytes(data))


def kill_all(process, run_dir, task):
    """SIGKILL the study's process group and the workers training ``task`` (Ray's worker processes
    leave the group; they would otherwise go on for a moment, saving and pruning checkpoints)."""
    workers = [worker_pid(run_dir, "ewc", task, rank) for rank in (0, 1)]
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    wait_until_gone(workers)


def verify(run_dir):
    return subprocess.run([sys.executable, "-m", "crdist", "verify", str(run_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def damaged_events(run_dir):
    return [e for e in journal(run_dir) if e["event"] == "damaged"]


def assert_same_as(run_dir, reference_dir):
    for path in sorted((reference_dir / "report").glob("matrix_*.json")):
        assert (run_dir / "report" / path.name).read_bytes() == path.read_bytes(), path.name
    for path in sorted((reference_dir / "models").rglob("c_*.safetensors")):
        got, expected = load_weights(run_dir / path.relative_to(reference_dir)), load_weights(path)
        assert all(torch.equal(got[k], expected[k]) for k in expected), path.name
    assert verify(run_dir).returncode == 0  # and nothing is left damaged


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("damage")
    assert finish(start(tmp_path, "reference", *DAMAGE)) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    return tmp_path, tmp_path / "runs" / "reference"


def test_a_flipped_byte_in_c_1_before_its_next_task_and_its_evaluations_trains_task_1_again(reference):
    tmp_path, reference_dir = reference
    run_dir = tmp_path / "runs" / "weights"
    first = start(tmp_path, "weights", *DAMAGE)
    c_1 = run_dir / "models" / "ewc" / "c_1.safetensors"
    wait_for(c_1.is_file, 300, "c_1", interval=0.02, alive=first)
    # Within a poll of c_1's writing: its workers (kept) train task 2, and c_1's evaluations have
    # most likely not started (the driver looks every 0.5 s).
    kill_all(first, run_dir, 1)
    flip_byte(c_1)
    result = verify(run_dir)
    assert result.returncode == 1
    assert ("damaged models/ewc/c_1.safetensors: its content differs from the digest recorded when it was written; "
            "task 1 of ewc trained again from c_0") in result.stdout
    assert "redoes: train/ewc/1" in result.stdout

    assert finish(start(tmp_path, "weights", *DAMAGE)) == 0, (tmp_path / "weights.log").read_text()[-3000:]
    log = (tmp_path / "weights.log").read_text()
    assert log.count("damaged models/ewc/c_1.safetensors") == 1
    assert [(e["job"], e["file"]) for e in damaged_events(run_dir)] == [("train/ewc/1", "models/ewc/c_1.safetensors")]
    assert (run_dir / "models" / "ewc" / "c_1.safetensors.damaged").is_file()  # kept to look at
    # Every evaluation of c_1 that ran after the damage read the retrained file: the matrices
    # equal the reference's, byte for byte.
    assert_same_as(run_dir, reference_dir)


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs of its own: the run directory on a disk the test can fill."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", f"crdist-{uuid.uuid4().hex[:8]}",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip("the full-disk test mounts a 32 MiB tmpfs of its own, which needs root (or CAP_SYS_ADMIN in a "
                    f"container); `mount` said: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_stops_the_job_then_damaged_checkpoints_and_a_lost_state_file_fall_back_to_what_is_sound(
        reference, small_disk):
    """The run directory on a small disk, filled during task 2 (three checkpoints kept): the job
    stops, naming the directory and the room it needs, with everything before intact. Then, before
    the same command runs again, the newest checkpoint gets a flipped byte, the one before it a
    truncated file, and c_1's method state loses rank 1's file. The resume trains task 1 again (its
    state is part of its output), then task 2 resumes from the third-newest checkpoint."""
    tmp_path, reference_dir = reference
    runs = small_disk / "runs"
    run_dir = runs / "full"
    # The shards stay where the reference prepared them; only the run directory is on the small disk.
    extra = [*DAMAGE, f"runs_dir={runs}", "train.max_failures=0", "checkpoint.keep=3"]
    first = start(tmp_path, "full", *extra)
    wait_for(checkpoint_on_disk(run_dir, "ewc", 2, 15), 300, "three checkpoints of task 2", interval=0.02,
             alive=first)
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    with open(filler, "wb") as f:  # leave less room than a checkpoint takes (about 2.6 MiB)
        f.write(b"\0" * max(0, free - 512 * 1024))
    assert finish(first) == 1
    log = (tmp_path / "full.log").read_text()
    assert f"{run_dir / 'checkpoints' / 'ewc' / 'task-2'}: no room to write the checkpoint step-" in log
    assert "Everything written before it is intact: make room there and run the same command again" in log
    assert "Traceback" not in log and "starting its workers again" not in log  # a full disk is not retried
    assert verify(run_dir).returncode == 0  # the checkpoints and c_1 are intact

    checkpoints = TaskCheckpoints(run_dir / "checkpoints" / "ewc" / "task-2")._complete()
    assert len(checkpoints) == 3
    oldest, before, newest = checkpoints
    flip_byte(newest / "engine" / "mp_rank_00_model_states.pt")
    position = before / "position-rank1.json"
    position.write_bytes(position.read_bytes()[:40])
    (run_dir / "models" / "ewc" / "c_1.state" / "rank-1.pt").unlink()
    result = verify(run_dir)
    assert result.returncode == 1
    for line in (f"checkpoints/ewc/task-2/{newest.name}: engine/mp_rank_00_model_states.pt: its "
                 f"content differs", f"checkpoints/ewc/task-2/{before.name}: position-rank1.json: ",
                 "models/ewc/c_1.state/rank-1.pt: method state missing; task 1 of ewc trained again from c_0"):
        assert line in result.stdout

    filler.unlink()
    assert finish(start(tmp_path, "full", *extra)) == 0, (tmp_path / "full.log").read_text()[-3000:]
    log = (tmp_path / "full.log").read_text()
    assert f"damaged ewc task 2/2: checkpoint {newest}" in log and f"damaged ewc task 2/2: checkpoint {before}" in log
    events = [(e["job"], e["file"].rsplit("/", 1)[-1]) for e in damaged_events(run_dir)]
    assert events == [("train/ewc/1", "rank-1.pt"), ("train/ewc/2", newest.name), ("train/ewc/2", before.name)]
    resumed = [e for e in journal(run_dir) if e["event"] == "finished" and e.get("job") == "train/ewc/2"]
    assert resumed[-1]["resumed_from"] == int(oldest.name.removeprefix("step-"))
    assert_same_as(run_dir, reference_dir)
    assert json.loads((run_dir / "report" / "metrics.json").read_text()) == json.loads(
        (reference_dir / "report" / "metrics.json").read_text())
