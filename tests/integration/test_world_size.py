"""A method that is deterministic given its data trains to the same weights on 1 rank and on 2 ranks
with the same global batch: real DeepSpeed ZeRO-2 processes outside Ray, two tasks with the
method's state carried between them, the global data order and a GroupNorm backbone (BatchNorm's
per-rank statistics would differ by design)."""


import pytest
import torch
import torch.multiprocessing as mp
from accelerate.state import AcceleratorState, GradientState

from crdist.bench.ranks import free_port, rank_environment
from crdist.models.classifier import build_classifier
from crdist.models.weights import load_weights, save_weights
from crdist.train.job import TrainJob
from crdist.train.worker import train_task
from tests.helpers import study

DETERMINISTIC = ["sgd", "lpft", "si", "ewc", "joint"]  # replay methods draw from per-rank buffers
GLOBAL_BATCH = 16
# ‖w₁ − w₂‖ / ‖w₁ − c₀‖ over the whole model. Gradients are summed across ranks in another order
# than within one rank's batch: float32 noise, which Adam's division by √v amplifies for weights
# whose gradients are near zero. Measured: at most 3.0e-4 (sgd's c_2), the others ≤ 8e-6; the
# sharded order, where the two runs see different samples, gives 0.43 to 0.93 at c_1.
TOLERANCE = 1e-3


def _rank_main(rank: int, world: int, port: int, jobs: list[list[TrainJob]]) -> None:
    with rank_environment(rank, world, port):
        for chain in jobs:
            for job in chain:
                train_task(job)
                # One Accelerator per process is Accelerate's rule (a Ray worker runs one job); the
                # process group stays, so the next job's Accelerator joins it again.
                AcceleratorState._reset_state(reset_partial_state=False)
            GradientState._reset_state()


def _train(tmp_path, shards, world: int, accumulate: bool = False) -> dict[str, list]:
    """``world`` ranks with the global batch of GLOBAL_BATCH: each rank's batch is its share, or
    with ``accumulate`` half of it, accumulated over two micro-batches (train.global_batch)."""
    batch = GLOBAL_BATCH // world // (2 if accumulate else 1)
    cfg = study(
        data={"shards": str(shards)},
        model={"backbone": "small-cnn-gn"},
        train={"methods": DETERMINISTIC, "workers": world, "batch_size": batch, "zero_stage": 2,
               "global_batch": GLOBAL_BATCH, "max_steps": 12, "data_order": "global", "loader_workers": 2},
        lpft={"probe_fraction": 0.5},
        ewc={"fisher_samples": 64},
    )
    out = tmp_path / f"world-{world}{'-accumulating' if accumulate else ''}"
    out.mkdir()
    c0 = out / "c_0.safetensors"
    save_weights(build_classifier(cfg.model, 1, 10, cfg.seed).state_dict(), c0)
    chains = []
    for method in DETERMINISTIC:
        d = out / method
        chains.append([
            TrainJob.from_study(cfg, method, task=t, num_tasks=2, shards=str(shards),
                                init_weights=str(c0 if t == 1 else d / "c_1.safetensors"),
                                output=str(d / f"c_{t}.safetensors"), checkpoints=str(d / f"checkpoints-{t}"),
                                log_dir=str(d / "logs"), init_state=str(d / f"c_{t - 1}.state") if t > 1 else None,
                                output_state=str(d / f"c_{t}.state"))
            for t in (1, 2)
        ])
    mp.spawn(_rank_main, args=(world, free_port(), chains), nprocs=world, join=True)
    return {m: [load_weights(out / m / f"c_{t}.safetensors") for t in (1, 2)] for m in DETERMINISTIC}


def relative_difference(a: dict, b: dict, start: dict) -> float:
    """‖a − b‖ / ‖a − start‖ over all weights together: how far apart two runs ended, measured
    against how far training moved them."""
    differs = sum(((a[k] - b[k]).double() ** 2).sum() for k in start).sqrt()
    moved = sum(((a[k] - start[k]).double() ** 2).sum() for k in start).sqrt()
    return (differs / moved).item()


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_one_rank_and_two_ranks_train_to_the_same_weights(method, world_size_runs):
    one, two = world_size_runs[1][method], world_size_runs[2][method]
    c0 = world_size_runs["c0"]
    for task in (0, 1):
        assert one[task].keys() == two[task].keys() == c0.keys()
        gap = relative_difference(one[task], two[task], c0)
        assert gap <= TOLERANCE, f"c_{task + 1}: {gap:.2e}"


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_one_rank_accumulating_two_micro_batches_trains_as_two_ranks_do(method, world_size_runs):
    """train.global_batch on 1 rank with half the batch: two micro-batches per step."""
    one, two = world_size_runs["1-accumulating"][method], world_size_runs[2][method]
    c0 = world_size_runs["c0"]
    for task in (0, 1):
        gap = relative_difference(one[task], two[task], c0)
        assert gap <= TOLERANCE, f"c_{task + 1}: {gap:.2e}"


@pytest.fixture(scope="module")
def world_size_runs(tmp_path_factory, digits_shards, deepspeed_cpu_op):
    tmp = tmp_path_factory.mktemp("world-size")
    runs = {world: _train(tmp, digits_shards, world) for world in (1, 2)}
    runs["1-accumulating"] = _train(tmp, digits_shards, 1, accumulate=True)
    runs["c0"] = load_weights(tmp / "world-1" / "c_0.safetensors")
    return runs


def _rank_main_killable(rank: int, world: int, port: int, job: TrainJob, events_path: str,
                        kill_at_step: int | None) -> None:
    import json

    from tests.integration.test_checkpoint_kill import kill_while_writing_checkpoint

    if kill_at_step is not None and rank == 0:
        kill_while_writing_checkpoint(kill_at_step)
    events = []
    with rank_environment(rank, world, port):
        train_task(job, report=events.append)
    if rank == 0:
        with open(events_path, "w") as f:
            json.dump(events, f)


def _resharding_job(directory, shards, world: int, zero_stage: int, method: str = "sgd") -> TrainJob:
    cfg = study(
        data={"shards": str(shards)},
        model={"backbone": "small-cnn-gn"},
        train={"methods": [method], "workers": world, "batch_size": 8, "global_batch": GLOBAL_BATCH,
               "zero_stage": zero_stage, "epochs": 2, "data_order": "global", "loader_workers": 2, "log_every": 1},
        checkpoint={"every_steps": 5},
    )
    c0 = directory.parent / "c_0.safetensors"
    if not c0.is_file():
        save_weights(build_classifier(cfg.model, 1, 10, cfg.seed).state_dict(), c0)
    return TrainJob.from_study(cfg, method, task=1, num_tasks=5, shards=str(shards), init_weights=str(c0),
                               output=str(directory / "c_1.safetensors"), checkpoints=str(directory / "checkpoints"),
                               log_dir=str(directory / "logs"), output_state=str(directory / "c_1.state"))


def _run(directory, shards, world: int, zero_stage: int, kill_at_step=None, method: str = "sgd"
         ) -> tuple[list[dict], TrainJob]:
    import json

    directory.mkdir(parents=True, exist_ok=True)
    job = _resharding_job(directory, shards, world, zero_stage, method)
    events = directory / f"events-{world}.json"
    mp.spawn(_rank_main_killable, args=(world, free_port(), job, str(events), kill_at_step), nprocs=world, join=True)
    return json.loads(events.read_text()), job


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_a_run_killed_on_two_ranks_resumes_on_one_with_the_same_global_batch(zero_stage, tmp_path, digits_shards,
                                                                              deepspeed_cpu_op):
    """The checkpoint's ZeRO partitions and AdamW moments are re-sharded for one rank, which
    accumulates two micro-batches per step (train.global_batch); it trains on as the two ranks do."""
    reference, ref_job = _run(tmp_path / "reference", digits_shards, world=2, zero_stage=zero_stage)
    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        _run(tmp_path / "resumed", digits_shards, world=2, zero_stage=zero_stage, kill_at_step=10)
    resumed, job = _run(tmp_path / "resumed", digits_shards, world=1, zero_stage=zero_stage)
    assert resumed[0]["kind"] == "start" and resumed[0]["step"] == 5
    ref_losses = {e["step"]: e["loss"] for e in reference if e["kind"] == "train"}
    losses = {e["step"]: e["loss"] for e in resumed if e["kind"] == "train"}
    assert sorted(losses) == [s for s in sorted(ref_losses) if s > 5]
    # the first step after the resume: the loaded weights are the saved ones, so only the order of
    # the gradient sums differs
    assert losses[6] == pytest.approx(ref_losses[6], rel=1e-5)
    assert max(abs(losses[s] - ref_losses[s]) / ref_losses[s] for s in losses) < 1e-3
    c0 = load_weights(job.init_weights)
    gap = relative_difference(load_weights(job.output), load_weights(ref_job.output), c0)
    assert gap <= TOLERANCE, f"{gap:.2e}"


def test_a_replay_method_killed_on_two_ranks_resumes_on_one_with_its_buffers_merged(tmp_path, digits_shards,
                                                                                     deepspeed_cpu_op):
    """ER keeps a reservoir per rank; resumed on one rank, the two reservoirs of the checkpoint are
    dealt into one, every stored sample kept, and training goes on from the checkpoint's step."""

    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        _run(tmp_path / "er", digits_shards, world=2, zero_stage=2, kill_at_step=10, method="er")
    checkpoint = tmp_path / "er" / "checkpoints" / "step-000005"
    before = [torch.load(checkpoint / f"method-rank{r}.pt", weights_only=True)["buffer"] for r in (0, 1)]
    resumed, job = _run(tmp_path / "er", digits_shards, world=1, zero_stage=2, method="er")
    assert resumed[0]["kind"] == "start" and resumed[0]["step"] == 5
    trained = [e for e in resumed if e["kind"] == "train"]
    steps = trained[-1]["steps"]
    assert trained[-1]["step"] == steps
    after = torch.load(tmp_path / "er" / "c_1.state" / "rank-0.pt", weights_only=True)["buffer"]
    # The merged reservoir went on from both: it saw what they had seen, plus the steps after 5.
    assert after["seen"] == sum(b["seen"] for b in before) + (steps - 5) * GLOBAL_BATCH
    assert after["capacity"] == sum(b["capacity"] for b in before)
