"""Every continual-learning method through `crdist run` on real Ray, two ranks: under ZeRO-2 with
its state carried from task 1 to task 2, and under ZeRO-3 for the methods that claim it. (der and
ewc train under ZeRO-2 in the recovery tests, where their workers are killed mid-task.)"""

import json
import re

import torch

from crdist.models.weights import load_weights
from tests.helpers.studies import finish, journal, method_state, start

SHORT = ["data.tasks=2", "train.max_steps=8", "evaluate.protocols=[knn]", "checkpoint.every_steps=4"]


def test_every_method_trains_two_ranks_under_zero2_and_carries_its_state(tmp_path):
    # (der, derpp and er run under ZeRO-3 below, der and ewc under ZeRO-2 in the recovery tests.)
    methods = ["agem", "si", "lump", "joint"]
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
            assert all((run / "models" / method / f"c_{t}.state" / f"rank-{r}.pt").is_file()
                       for t in (1, 2) for r in (0, 1))

    # Replay: each rank's reservoir saw its own 8 batches of 16 per task, and task 2 added to it.
    for method in ("lump",):
        first, second = method_state(run, method, 1, 0)["buffer"], method_state(run, method, 2, 0)["buffer"]
        assert (first["seen"], second["seen"]) == (8 * 16, 2 * 8 * 16)
        assert set(first["tasks"].tolist()) == {1} and 2 in second["tasks"].tolist()
    # A-GEM's memory takes 256 // 2 tasks samples at each task end, split across the ranks.
    assert [len(method_state(run, "agem", t, 1)["memory"]["labels"]) for t in (1, 2)] == [64, 128]
    # SI's importance, the same on both ranks, grew over the two tasks.
    si = {(t, r): method_state(run, "si", t, r)["importance"] for t in (1, 2) for r in (0, 1)}
    assert all(torch.equal(si[(2, 0)][k], si[(2, 1)][k]) for k in si[(2, 0)])
    assert all((si[(2, 0)][k] >= si[(1, 0)][k]).all() for k in si[(1, 0)])
    assert any((si[(2, 0)][k] > si[(1, 0)][k]).any() for k in si[(1, 0)])


def test_the_methods_that_claim_zero3_train_under_it(tmp_path):
    claims = ["er", "der", "derpp", "lump", "frozen"]
    process = start(tmp_path, "zero3", "data.tasks=1", "train.max_steps=6", "evaluate.protocols=[knn]",
                    "train.zero_stage=3", f"train.methods=[{','.join(claims)}]")
    assert finish(process, timeout=900) == 0, (tmp_path / "zero3.log").read_text()[-3000:]
    run = tmp_path / "runs" / "zero3"
    for method in claims:
        summary = json.loads((run / "models" / method / "c_1.train.json").read_text())
        assert (summary["world"], summary["zero_stage"], summary["steps"]) == (2, 3, 0 if method == "frozen" else 6)
    # frozen never trains: its checkpoint is c_0, and its matrix's row 1 is row 0.
    c0, frozen = load_weights(run / "models" / "c_0.safetensors"), load_weights(run / "models" / "frozen" / "c_1.safetensors")
    assert all(torch.equal(c0[k], frozen[k]) for k in c0)
    rows = json.loads((run / "report" / "matrix_frozen_knn.json").read_text())["accuracy"]
    assert rows[0] == rows[1]
