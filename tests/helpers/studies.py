"""Starting and following whole studies (`crdist run` in its own process group), and reading what
their run directories hold: the integration tests' common vocabulary."""

import json
import subprocess
import sys

import psutil
import torch

from crdist.bench.faults import wait_for
from tests.helpers import ROOT

# Long enough tasks (140 steps) that every failure below lands mid-task; checkpoints every 10 steps.
# With the paper's augmentation and SGD with momentum, so that exact resume covers the per-sample
# augmentation seeds and the momentum buffers too.
STUDY = [
    "data.tasks=2", "train.methods=[lpft]", "train.epochs=20", "train.log_every=1",
    "checkpoint.every_steps=10", "evaluate.finetune.steps=5", "data.augment=paper", "train.optimizer=sgd",
    "train.lr=0.01",
]
TENSORBOARD = "tracking.tensorboard=true"


def command(tmp_path, name, *extra):
    sets = [*STUDY, f"name={name}", f"runs_dir={tmp_path / 'runs'}", f"data.shards={tmp_path / 'shards'}", *extra]
    return [sys.executable, "-m", "crdist", "run"] + [x for s in sets for x in ("--set", s)]


def start(tmp_path, name, *extra, env=None):
    log = open(tmp_path / f"{name}.log", "a")
    return subprocess.Popen(command(tmp_path, name, *extra), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)


def finish(process, timeout=600) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()


def journal(run_dir):
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines() if line.strip()]


def finished_once(run_dir) -> dict:
    finished = [e for e in journal(run_dir) if e["event"] == "finished"]
    keys = [e["job"] for e in finished]
    assert len(keys) == len(set(keys)), f"a finished job was run again: {keys}"
    return {e["job"]: e for e in finished}


def wait_until_gone(pids, timeout=60):
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), timeout, "the old processes to exit")


def method_state(run_dir, method, task, rank) -> dict:
    return torch.load(run_dir / "models" / method / f"c_{task}.state" / f"rank-{rank}.pt", weights_only=True)


def same(a, b) -> bool:
    """Deep equality of states: tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
