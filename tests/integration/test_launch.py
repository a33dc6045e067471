"""The launchers run for real: `launchers/ray/submit.sh` submits a study with `ray job submit` to a
two-node Ray cluster on loopback, and `launchers/slurm/crdist.sbatch` runs under stand-ins for
`srun` and `scontrol` (tests/helpers/slurm/). Each is interrupted mid-task and launched again with the same
command, and the run resumes from its checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from crdist.bench.faults import checkpoint_on_disk, events, wait_for
from tests.helpers import ROOT
from tests.helpers.ray_clusters import (
    assert_door_shut,
    free_port,
    new_temp_dir,
    ray_start,
    ray_stop,
    token_of_this_user,
)

# Two tasks of sgd, long enough (120 steps each) to be interrupted mid-task; one worker per node.
STUDY = ["data.tasks=2", "train.methods=[sgd]", "train.epochs=20", "train.max_steps=120", "train.log_every=2",
         "checkpoint.every_steps=10", "evaluate.protocols=[knn]", "train.placement=SPREAD"]
SETS = [x for s in STUDY for x in ("--set", s)]
VENV_BIN = str(Path(sys.executable).parent)
JOB_SERVER = Path(sys.prefix) / "ray-job-server"  # ray[default]'s packages, installed apart by tests/run


def journal(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines() if line.strip()]


def starts(run_dir: Path, method: str, task: int) -> list[int]:
    return [e["step"] for e in events(run_dir) if e.get("kind") == "start" and (e["method"], e["task"]) == (method, task)]


def interrupted_task(run_dir: Path) -> int:
    """The task the first launch was in when it was interrupted: the first one whose training resumed
    (a later task resumes too only if Ray Train restarted its workers after a system failure)."""
    finished = {e["job"]: e for e in journal(run_dir) if e["event"] == "finished"}
    resumed = [e for e in finished.values() if e["job"].startswith("train/") and e.get("resumed_from")]
    assert resumed, finished
    return min(int(e["job"].rsplit("/", 1)[1]) for e in resumed)


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def accepts_jobs(env: dict) -> bool:
    """Whether the head's job server takes a submission yet: its agents register a while after
    `ray start` returns ("No available agent to submit job")."""
    probe = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--no-wait",
                            "--submission-id", f"probe-{time.monotonic_ns()}", "--", "true"],
                           env=env, capture_output=True, timeout=60)
    return probe.returncode == 0


def test_ray_job_submit_runs_a_study_and_the_same_command_after_a_kill_resumes_it(tmp_path):
    assert (JOB_SERVER / ".complete").is_file(), f"no Ray job server in {JOB_SERVER}; tests/run installs it"
    shared = tmp_path / "shared"
    shared.mkdir()
    port, dashboard = free_port(), free_port()
    # A temp dir per node, as separate hosts have: each node unpacks the job's working directory
    # into its own, and a second node unpacking into the head's would replace the files under the
    # running driver ("No module named …").
    temp_dir, node2_temp_dir = new_temp_dir(), new_temp_dir()
    python_path = os.pathsep.join([str(JOB_SERVER), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}",
           "CRDIST_SHARED": str(shared), "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
           "PYTHONPATH": python_path}
    command = ["bash", str(ROOT / "launchers" / "ray" / "submit.sh"), "configs/demo.yaml", "jobs", *SETS]
    run_dir = shared / "runs" / "jobs"
    submissions = []
    try:
        node_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
        # Each node's dashboard agent (what takes the job submissions) on a port of its own: its
        # default, 52365, belongs to whichever Ray on this machine took it first.
        ray_start(temp_dir, "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                  "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                  f"--dashboard-agent-listen-port={free_port()}", env=node_env)
        ray_start(node2_temp_dir, f"--address=127.0.0.1:{port}", "--num-cpus=2", f"--temp-dir={node2_temp_dir}",
                  f"--dashboard-agent-listen-port={free_port()}", env=node_env)
        wait_for(lambda: accepts_jobs(env), 120, "the job server to accept jobs", interval=2)
        # The cluster the Ray launcher submits to, started as docs/launchers.md says (token on): it
        # runs code only for a process with the token.
        assert_door_shut(f"127.0.0.1:{port}", token_of_this_user(private=False), tmp_path, wrong_token=False)

        def submit(name: str) -> subprocess.Popen:
            log = open(tmp_path / f"{name}.log", "w")
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            submissions.append(process)
            return process

        first = submit("first")
        wait_for(checkpoint_on_disk(run_dir, "sgd", 1, 30), 600, "the checkpoint at step 30 of task 1", alive=first)
        drivers = [p for p in psutil.process_iter(["cmdline"])
                   if {"crdist", "run", "jobs"} <= set(p.info["cmdline"] or []) and "-m" in (p.info["cmdline"] or [])]
        assert len(drivers) == 1, [p.info["cmdline"] for p in drivers]
        drivers[0].kill()  # the job's driver dies mid-task, without a chance to checkpoint
        assert first.wait(timeout=120) != 0  # `ray job submit` reports the failed job

        second = submit("second")
        assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        for process in submissions:
            kill_group(process)
        ray_stop(node2_temp_dir)
        ray_stop(temp_dir)

    first_log, second_log = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert "crdist-jobs" in first_log  # the submission id, derived from the run name
    assert "replacing the earlier submission crdist-jobs (FAILED)" in second_log
    assert "joined the Ray cluster" in second_log and "2 nodes" in second_log
    assert [e["resumed"] for e in journal(run_dir) if e["event"] == "run"] == [False, True]
    resumed_at = starts(run_dir, "sgd", 1)
    assert resumed_at[0] == 0 and resumed_at[-1] >= 20 and resumed_at[-1] % 10 == 0  # from a periodic checkpoint
    assert (run_dir / "report" / "metrics.json").is_file()
    assert not any(shared.glob("**/launchers"))  # the code stays in the job's upload, off shared storage


def test_the_slurm_script_checkpoints_on_term_requeues_itself_and_the_requeued_job_resumes(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    job_tmp = new_temp_dir()  # the job's TMPDIR: its Ray temp dir is $TMPDIR/ray-<job id>
    requeues = tmp_path / "scontrol.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({
        "PATH": os.pathsep.join([str(ROOT / "tests" / "helpers" / "slurm"), VENV_BIN, os.environ["PATH"]]),
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node-a,node-b", "SLURM_CPUS_PER_TASK": "2",
        "SLURM_GPUS_ON_NODE": "0", "TMPDIR": job_tmp, "SLURM_STANDIN_LOG": str(requeues),
    })
    command = ["bash", str(ROOT / "launchers" / "slurm" / "crdist.sbatch"), str(ROOT / "configs" / "demo.yaml"),
               "slurm", *SETS]
    run_dir = shared / "runs" / "slurm"
    log_path = tmp_path / "crdist-slurm.out"  # --open-mode=append: both attempts write to one file
    launched = []

    def batch_job() -> subprocess.Popen:
        process = subprocess.Popen(command, cwd=shared, env=env, stdout=open(log_path, "a"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        launched.append(process)
        return process

    try:
        first = batch_job()
        wait_for(checkpoint_on_disk(run_dir, "sgd", 1, 30), 600, "the checkpoint at step 30 of task 1", alive=first)
        first.send_signal(signal.SIGTERM)  # --signal=B:TERM: to the batch shell alone
        assert first.wait(timeout=180) == 143, log_path.read_text()[-3000:]
        assert requeues.read_text() == "requeue 4242\n"
        # SLURM ends the job's steps (the Ray nodes) before it starts the job again.
        ray_stop(f"{job_tmp}/ray-4242")
        env["SLURM_RESTART_COUNT"] = "1"
        second = batch_job()
        # The job's cluster (head on 20000 + 4242 % 400 × 100) runs code only for a process with the
        # token, which the script left readable by its owner only.
        wait_for(lambda: log_path.read_text().count("2 of 2 node(s) joined") == 2, 300, "the requeued job's cluster",
                 alive=second)
        head_ip = subprocess.run(["hostname", "--ip-address"], capture_output=True, text=True).stdout.split()[0]
        assert_door_shut(f"{head_ip}:44200", token_of_this_user(), tmp_path, wrong_token=False)
        assert second.wait(timeout=900) == 0, log_path.read_text()[-3000:]
    finally:
        for process in launched:
            kill_group(process)
        ray_stop(f"{job_tmp}/ray-4242")

    log = log_path.read_text()
    assert log.count("2 of 2 node(s) joined") == 2 and log.count("(2 nodes, 4 CPUs)") == 2
    assert "TERM received; the driver checkpoints and stops" in log and "requeueing job 4242" in log
    stopped = [e for e in events(run_dir) if e.get("kind") == "checkpoint" and e["stopping"]]
    assert len(stopped) == 1
    task = stopped[0]["task"]
    # The requeued job resumed at that step. (A later restart of its worker group, from a periodic
    # checkpoint, is Ray Train's to make after a system failure: one suite run saw a Ray Train
    # actor die of a SIGSEGV inside getenv, and the job went on from its checkpoint at step 90.)
    resumed = starts(run_dir, "sgd", task)
    assert resumed[:2] == [0, stopped[0]["step"]] and all(s > stopped[0]["step"] and s % 10 == 0 for s in resumed[2:])
    assert interrupted_task(run_dir) == task
    assert [e["resumed"] for e in journal(run_dir) if e["event"] == "run"] == [False, True]
    assert (run_dir / "report" / "metrics.json").is_file()
