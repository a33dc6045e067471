"""Where a study's Ray comes from, on a machine that already runs Ray: `RAY_ADDRESS` joins that
cluster, no address starts a private one (side by side with any other), and a driver killed with its
whole process group leaves nothing running once the run is done again. The private cluster runs
code only for a process with its token, and no secret of the environment reaches the run directory."""

import os
import re
import signal
import subprocess
import sys
import time
from signal import SIGKILL

import psutil
import pytest

from crdist.bench.faults import wait_for
from tests.helpers import ROOT
from tests.helpers.ray_clusters import assert_door_shut, free_port, new_temp_dir, ray_start, ray_stop

# One task, a few steps, kNN only: what matters here is where each run's Ray comes from.
TINY = ["data.tasks=1", "train.methods=[sgd]", "train.max_steps=4", "evaluate.protocols=[knn]"]


def start(tmp_path, name, *extra, env=None):
    sets = [*TINY, f"name={name}", f"runs_dir={tmp_path / 'runs'}", f"data.shards={tmp_path / 'shards'}", *extra]
    command = [sys.executable, "-m", "crdist", "run"] + [x for s in sets for x in ("--set", s)]
    log = open(tmp_path / f"{name}.log", "a")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)


def finish(process, timeout=600) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# Secrets a user's environment may hold while a study runs: Ray's token (the private cluster then
# takes it as its own), MLflow's and W&B's credentials.
CANARIES = {
    "RAY_AUTH_TOKEN": "ca11ab1e" * 8,
    "MLFLOW_TRACKING_PASSWORD": "canary-mlflow-password-7f3e9d",
    "MLFLOW_TRACKING_TOKEN": "canary-mlflow-token-91ab2c",
    "WANDB_API_KEY": "canary00wandb00key00" + "5" * 20,
}


def gcs_address(driver_pid: int) -> str | None:
    """The GCS address of the private cluster a driver started, as its raylet was told it."""
    try:
        children = psutil.Process(driver_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        for arg in cmdline:
            if arg.startswith("--gcs-address="):
                return arg.split("=", 1)[1]
    return None


@pytest.fixture
def ray_start_cluster():
    """A cluster started with `ray start --head` on loopback, as on a node where someone ran it: it
    also writes /tmp/ray/ray_current_cluster, which a bare ray.init() would join."""
    address = f"127.0.0.1:{free_port()}"
    temp_dir = new_temp_dir()
    ray_start(temp_dir, "--head", f"--port={address.split(':')[1]}", "--num-cpus=3", "--include-dashboard=false")
    try:
        yield address
    finally:
        ray_stop(temp_dir)


def test_ray_address_joins_and_no_address_starts_a_private_cluster_beside_others(tmp_path, ray_start_cluster):
    """Two studies at once: one under RAY_ADDRESS, one without an address on the same machine, where
    `ray start` has left /tmp/ray/ray_current_cluster. The private one starts once the joined one is
    under way, so it sees another crdist's Ray running too. The private one's environment holds
    secrets (Ray's token, which its cluster then takes, MLflow's and W&B's credentials) with every
    tracker on: its cluster runs code only for a client with that token, and no secret reaches
    anything the study writes."""
    plain = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    joined = start(tmp_path, "joined", env={**plain, "RAY_ADDRESS": ray_start_cluster, "RAY_AUTH_MODE": "token"})
    wait_for(lambda: "joined the Ray cluster" in (tmp_path / "joined.log").read_text(), 300,
             "the first run to join", alive=joined)
    # 200 steps: the private study outlives the clients' tries (under a minute).
    private = start(tmp_path, "private", "seed=1", "train.max_steps=200", "tracking.tensorboard=true",
                    "tracking.mlflow=true", "tracking.wandb=true", env={**plain, **CANARIES})
    address = wait_for(lambda: gcs_address(private.pid), 300, "the private cluster's GCS", alive=private)
    home = tmp_path / "home"
    home.mkdir()
    assert_door_shut(address, CANARIES["RAY_AUTH_TOKEN"], home)
    codes = {name: finish(p) for name, p in (("joined", joined), ("private", private))}
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in codes}
    assert codes == {"joined": 0, "private": 0}, {n: logs[n][-2000:] for n in codes if codes[n]}

    assert f"joined the Ray cluster at {ray_start_cluster} (from RAY_ADDRESS)" in logs["joined"]
    assert "started a local Ray cluster" in logs["private"] and "joined" not in logs["private"]
    for name in codes:
        assert (tmp_path / "runs" / name / "report" / "metrics.json").is_file()

    # Everything written (run directories, logs, configs, events, the trackers' stores, the
    # consoles' output) is free of every secret.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("mlflow" in p.parts for p in written) and any("wandb" in p.parts for p in written)
    for path in written:
        data = path.read_bytes()
        for name, value in CANARIES.items():
            assert value.encode() not in data, f"{name} found in {path}"


def _group_of(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None


def _command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_a_driver_killed_as_a_train_job_starts_leaves_no_process_once_the_run_is_done(tmp_path):
    first = start(tmp_path, "killed")

    def train_job_starting():
        try:
            processes = psutil.Process(first.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        names = []
        for p in processes:
            try:
                names.append(" ".join(p.cmdline()))
            except psutil.Error:
                continue
        return processes if any("TrainController" in n for n in names) else []

    processes = wait_for(train_job_starting, 300, "the first train job's controller", alive=first)
    # Ray's worker processes run in process groups of their own, so a kill of the driver's group
    # misses them; they usually exit once they notice their raylet is gone. Stop them, so that
    # they behave like the one that did not (alive an hour later): only the rerun can end them.
    outside = [p for p in processes if _group_of(p) not in (None, first.pid)]
    controller = next(p for p in outside if "TrainController" in _command_line(p))
    # One more of the killed driver's processes that Ray cannot end, whatever it ends by itself: a
    # process with the controller's own environment (the driver's marks on its run, inherited by
    # every process of its cluster) in a session of its own, like the controller found alive an
    # hour after its driver died. The rerun always has it to end.
    straggler = psutil.Popen([sys.executable, "-c", "import time; time.sleep(900)"], env=controller.environ(),
                             start_new_session=True)
    try:
        for p in outside:
            try:
                p.suspend()
            except psutil.NoSuchProcess:  # an idle worker Ray reaped meanwhile
                pass
        os.killpg(first.pid, SIGKILL)
        first.wait()
        time.sleep(3)
        # Ray ends some of them itself (a raylet's death takes its direct workers along); what it
        # does not end (loader processes a worker forked, …) stays, stopped, as in the wild.
        left = [p for p in [*outside, straggler] if alive(p)]
        assert straggler in left

        assert finish(start(tmp_path, "killed")) == 0, (tmp_path / "killed.log").read_text()[-3000:]
        assert [p for p in [*outside, straggler] if alive(p)] == []
        ended = re.search(r"ended (\d+) process\(es\) that an earlier, killed driver of this run left running",
                          (tmp_path / "killed.log").read_text())
        # Ray may still end some of the stopped ones after they were counted; never the straggler.
        assert ended and int(ended.group(1)) >= 1
        assert (tmp_path / "runs" / "killed" / "report" / "metrics.json").is_file()
    finally:
        straggler.kill()
        for p in outside:
            try:
                p.kill()
            except psutil.Error:
                pass
