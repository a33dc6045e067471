"""Every continual-learning method through `crdist run` on real Ray, two ranks, over two tasks: the
methods that claim ZeRO-3 under it, the others under ZeRO-2. Each method with state (er, der,
derpp, lump, agem, ewc, si) carries it from task 1 to task 2. (der and ewc also train under ZeRO-2
in the recovery tests, where their workers are killed mid-task.)"""

import json
import re

import torch

from crdist.models.weights import load_weights
from tests.helpers.studies import finish, journal, method_state, start

SHORT = ["data.tasks=2", "train.max_steps=8", "evaluate.protocols=[knn]", "checkpoint.every_steps=4"]


def assert_state_carried(run, method: str) -> None:
    """Both ranks wrote the method's state at the end of both tasks."""
    assert all((run / "models" / method / f"c_{t}.state" / f"rank-{r}.pt").is_file() for t in (1, 2) for r in (0, 1))


def assert_reservoir_carried(run, method: str, steps: int) -> None:
    """Each rank's reservoir saw its own ``steps`` batches of 16 per task, and task 2 added to what
    task 1 left."""
    first, second = method_state(run, method, 1, 0)["buffer"], method_state(run, method, 2, 0)["buffer"]
    assert (first["seen"], second["seen"]) == (steps * 16, 2 * steps * 16)
    assert set(first["tasks"].tolist()) == {1} and 2 in second["tasks"].tolist()


def test_every_method_trains_two_ranks_under_zero2_and_carries_its_state(tmp_path):
    # (er, der, derpp and lump carry theirs under ZeRO-3 below.)
    methods = ["agem", "si", "ewc", "joint"]
    process = start(tmp_path, "zero2", *SHORT, f"train.methods=[{','.join(methods)}]")
    assert finish(process, timeout=900) == 0, (tmp_path / "zero2.log").read_text()[-3000:]
    run = tmp_path / "runs" / "zero2"
    assert set(json.loads((run / "report" / "metrics.json").read_text())) == set(methods)
    # The four chains' jobs never ran more at once than the cluster's CPUs can train: the others
    # waited in the driver instead of holding a Ray task and controller each.
    cpus = int(re.search(r"local Ray cluster with (\d+) CPUs", (tmp_path / "zero2.log").read_text())[1])
    running, most = set(), 0
    for event in journal(run):
        if event.get("job", "").startswith("train/"):
            (running.add if event["event"] == "started" else running.discard)(event["job"])
            most = max(most, len(running))
    assert most == max(1, cpus // 2)
    for method in methods:
        summary = json.loads((run / "models" / method / "c_2.train.json").read_text())
        assert (summary["world"], summary["zero_stage"], summary["steps"]) == (2, 2, 8)
        if method != "joint":  # it keeps no state: the data holds the past
            assert summary["method_state_bytes"] > 0
            assert_state_carried(run, method)

    # A-GEM's memory takes 256 // 2 tasks samples at each task end, split across the ranks.
    assert [len(method_state(run, "agem", t, 1)["memory"]["labels"]) for t in (1, 2)] == [64, 128]
    # SI's importance, the same on both ranks, grew over the two tasks.
    si = {(t, r): method_state(run, "si", t, r)["importance"] for t in (1, 2) for r in (0, 1)}
    assert all(torch.equal(si[(2, 0)][k], si[(2, 1)][k]) for k in si[(2, 0)])
    assert all((si[(2, 0)][k] >= si[(1, 0)][k]).all() for k in si[(1, 0)])
    assert any((si[(2, 0)][k] > si[(1, 0)][k]).any() for k in si[(1, 0)])
    # EWC's Fisher, all-reduced so the same on both ranks, summed over the two tasks (γ = 1).
    ewc = {(t, r): method_state(run, "ewc", t, r)["fisher"] for t in (1, 2) for r in (0, 1)}
    assert ewc[(1, 0)] and all(torch.equal(ewc[(2, 0)][k], ewc[(2, 1)][k]) for k in ewc[(2, 0)])
    assert all((ewc[(2, 0)][k] >= ewc[(1, 0)][k]).all() for k in ewc[(1, 0)])
    assert any((ewc[(2, 0)][k] > ewc[(1, 0)][k]).any() for k in ewc[(1, 0)])


def test_the_methods_that_claim_zero3_train_under_it_and_carry_their_state(tmp_path):
    claims = ["er", "der", "derpp", "lump", "frozen"]
    process = start(tmp_path, "zero3", "data.tasks=2", "train.max_steps=6", "evaluate.protocols=[knn]",
                    "train.zero_stage=3", f"train.methods=[{','.join(claims)}]")
    assert finish(process, timeout=900) == 0, (tmp_path / "zero3.log").read_text()[-3000:]
    run = tmp_path / "runs" / "zero3"
    for method in claims:
        for task in (1, 2):
            summary = json.loads((run / "models" / method / f"c_{task}.train.json").read_text())
            assert (summary["world"], summary["zero_stage"], summary["steps"]) == (2, 3, 0 if method == "frozen" else 6)
    # The replay methods' reservoirs, carried from task 1 to task 2; der's keeps each sample's logits.
    for method in ("er", "der", "derpp", "lump"):
        assert_state_carried(run, method)
        assert_reservoir_carried(run, method, steps=6)
    for method in ("der", "derpp"):
        buffer = method_state(run, method, 2, 1)["buffer"]
        assert buffer["logits"].shape == (len(buffer["labels"]), 10)
    # frozen never trains: its checkpoints are c_0, and every row of its matrix is row 0.
    c0 = load_weights(run / "models" / "c_0.safetensors")
    for task in (1, 2):
        frozen = load_weights(run / "models" / "frozen" / f"c_{task}.safetensors")
        assert all(torch.equal(c0[k], frozen[k]) for k in c0)
    rows = json.loads((run / "report" / "matrix_frozen_knn.json").read_text())["accuracy"]
    assert rows[0] == rows[1] == rows[2]
