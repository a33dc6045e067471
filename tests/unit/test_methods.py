"""Each continual-learning method's defining property, on a real model and hand-made data, in one
process: what the method computes, and that its state reloads bit for bit."""

import dataclasses
import io
import random

import pytest
import torch
import torch.nn.functional as F

from crdist.data.manifest import SplitRecord, TaskRecord
from crdist.methods import METHODS
from crdist.methods.agem import project
from crdist.methods.base import MethodContext, Phase, build_method, trainable
from crdist.methods.buffer import ReservoirBuffer
from crdist.models.classifier import build_classifier
from crdist.models.config import ModelConfig

PHASE = Phase("train", 10, train_backbone=True, lr=0.01)


def classes(task: int) -> list[int]:
    """Task t's classes: 2t − 2 and 2t − 1 (tasks 1 and 2 share the 4 classes of the model)."""
    return [2 * task - 2, 2 * task - 1]


def context(method: str, task: int = 1, tasks: int = 2, batches=None, head: str = "shared", **extra) -> MethodContext:
    record = TaskRecord(index=task, name=f"task-{task}", classes=classes(task),
                        splits={"train": SplitRecord(0, {}, [])})
    return MethodContext(method=method, task=record, num_tasks=tasks, num_classes=4, modality="image",
                         head=head, lr=0.01, seed=0, batches=batches,
                         task_classes=tuple(tuple(classes(t)) for t in range(1, task + 1)), **extra)


def model():
    return build_classifier(ModelConfig(), in_channels=1, num_classes=4, seed=0)


def batch(seed: int, n: int = 8):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def task_batch(seed: int, task: int, n: int = 8):
    """A batch of task ``task``: its labels are that task's classes."""
    inputs, labels = batch(seed, n)
    return inputs, classes(task)[0] + labels % 2


def twin(buffer: ReservoirBuffer) -> ReservoirBuffer:
    """A copy of ``buffer`` in the same state: its next draws are the ones ``buffer`` makes next."""
    copy = ReservoirBuffer(buffer.capacity, seed=0, keep_logits=buffer.keep_logits)
    copy.load_state_dict(roundtrip(buffer.state_dict()))
    return copy


def roundtrip(state: dict) -> dict:
    """Through the same serialisation checkpoints use (torch.save, weights-only load)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_every_method_with_options_owns_a_config_section():
    from crdist.study import StudyConfig
    from tests.helpers import study

    cfg = study(der={"alpha": 0.3}, ewc={"lam": 5.0}, train={"methods": ["der", "ewc"]})
    assert cfg.der.alpha == 0.3 and cfg.ewc.lam == 5.0 and cfg.lpft.probe_fraction == 0.3
    sections = {f.name for f in dataclasses.fields(StudyConfig)}
    assert {"lpft", "er", "der", "derpp", "agem", "si", "ewc", "lump"} <= sections


def test_the_reservoir_keeps_every_sample_with_equal_probability():
    # 1,000 buffers of 10 slots, each offered the same 50 samples: each sample should be kept
    # 1000 · 10/50 = 200 times. A chi-square test (49 degrees of freedom) at p = 0.001 rejects
    # above 85.4; with this fixed seed the statistic is far below.
    kept = torch.zeros(50)
    values = torch.arange(50, dtype=torch.float32).view(50, 1)
    for trial in range(1000):
        buffer = ReservoirBuffer(10, seed=trial)
        for start in range(0, 50, 10):
            buffer.add(values[start : start + 10], torch.zeros(10, dtype=torch.long), task=1)
        assert len(buffer) == 10 and buffer.seen == 50
        kept[buffer.inputs.view(-1).long()] += 1
    chi2 = ((kept - 200) ** 2 / 200).sum().item()
    assert chi2 < 85.4, chi2


def test_a_buffer_reloaded_from_its_state_draws_exactly_what_the_original_draws():
    buffer = ReservoirBuffer.for_rank(7, seed=0, method="er", rank=1, world=2)  # 7 over 2 ranks: 3 here
    assert buffer.capacity == 3
    for seed in range(4):
        buffer.add(*batch(seed), task=1)
    copy = ReservoirBuffer.for_rank(7, seed=0, method="er", rank=1, world=2)
    copy.load_state_dict(roundtrip(buffer.state_dict()))
    for seed in range(4, 6):
        buffer.add(*batch(seed), task=2)
        copy.add(*batch(seed), task=2)
    a, b = buffer.sample(2), copy.sample(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(buffer.inputs, copy.inputs)


@pytest.mark.parametrize("old_world, new_world", [(2, 1), (1, 2), (2, 3)])
def test_reservoirs_resharded_for_another_worker_count_keep_every_sample_and_load(old_world, new_world):
    size = 7
    old = [ReservoirBuffer.for_rank(size, seed=0, method="der", rank=r, world=old_world, keep_logits=True)
           for r in range(old_world)]
    for r, buffer in enumerate(old):
        for seed in range(3):
            inputs, labels = batch(10 * r + seed)
            buffer.add(inputs, labels, task=1 + seed % 2, logits=torch.randn(len(labels), 4))
    states = ReservoirBuffer.reshard([roundtrip(b.state_dict()) for b in old], new_world, seed=0, method="der")
    assert len(states) == new_world
    rows = lambda buffers: sorted(  # noqa: E731  (input, label, logits, task) of every stored sample
        (x.flatten().tolist(), int(y), z.tolist(), int(t)) for b in buffers
        for x, y, z, t in zip(b["inputs"], b["labels"], b["logits"], b["tasks"]))
    assert rows(states) == rows([b.state_dict() for b in old])
    assert sum(s["seen"] for s in states) == sum(b.seen for b in old)
    for rank, state in enumerate(states):
        # Each loads into the buffer that rank builds for the new world size, and keeps working.
        buffer = ReservoirBuffer.for_rank(size, seed=0, method="der", rank=rank, world=new_world, keep_logits=True)
        buffer.load_state_dict(state)
        assert len(buffer) <= buffer.capacity
        inputs, labels = batch(99)
        buffer.add(inputs, labels, task=3, logits=torch.randn(len(labels), 4))
        assert len(buffer) == buffer.capacity


def test_state_that_is_the_same_on_every_rank_is_given_to_new_ranks_and_different_state_is_refused():
    from crdist.methods.base import ReshardError

    ewc = METHODS.get("ewc")
    same = {"fisher": {"w": torch.ones(3)}, "anchor": {"w": torch.zeros(3)}}
    given = ewc.reshard_state([same, roundtrip(same)], 3, seed=0)
    assert len(given) == 3 and all(state is same for state in given)
    different = {"fisher": {"w": torch.full((3,), 2.0)}, "anchor": {"w": torch.zeros(3)}}
    with pytest.raises(ReshardError, match="ewc: its 2 workers hold different state"):
        ewc.reshard_state([same, different], 1, seed=0)


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_fastest_along_high_fisher_directions():
    net = model()
    ewc = build_method("ewc", context("ewc", batches=lambda epoch: iter([batch(0), batch(1)])),
                       METHODS.get("ewc").Config(lam=2.0, fisher_samples=16))
    assert ewc.penalty(net) == 0.0  # no earlier task
    ewc.end_task(net)
    assert set(ewc.fisher) == {n for n, _ in trainable(net)}
    assert all((f >= 0).all() for f in ewc.fisher.values()) and any((f > 0).any() for f in ewc.fisher.values())
    assert ewc.penalty(net).item() == 0.0  # at the anchor
    head = ewc.fisher["head.weight"].view(-1)
    high, low = int(head.argmax()), int(head.argmin())
    assert head[high] > head[low]
    for index, name in ((high, "high"), (low, "low")):
        moved = model()
        moved.load_state_dict(net.state_dict())
        with torch.no_grad():
            moved.head.weight.view(-1)[index] += 0.5
        penalty = ewc.penalty(moved).item()
        assert penalty == pytest.approx(0.5 * 2.0 * head[index].item() * 0.25, rel=1e-5)
        if name == "high":
            high_penalty = penalty
    assert high_penalty > penalty


def test_si_importance_accumulates_over_tasks():
    net = model()
    si = build_method("si", context("si"), METHODS.get("si").Config())
    importances = []
    for task in (1, 2):
        si.start_task(net)
        grads = [torch.ones_like(p) for _, p in trainable(net)]
        si.on_gradients(net, grads, lr=0.1)  # ω += 0.1 · 1²
        with torch.no_grad():
            for p in net.parameters():
                p += 1.0  # θ moved by 1 during the task
        si.end_task(net)
        importances.append({n: v.clone() for n, v in si.importance.items()})
    for name, first in importances[0].items():
        assert torch.allclose(first, torch.full_like(first, 0.1 / (1 + 1)))  # ω / (Δθ² + ξ)
        assert torch.allclose(importances[1][name], 2 * first)  # += over tasks, not overwritten


def test_agem_projection_never_points_against_the_memory_gradient():
    generator = torch.Generator().manual_seed(0)
    conflicts = 0
    for _ in range(200):
        g, reference = torch.randn(20, generator=generator), torch.randn(20, generator=generator)
        projected = project(g, reference)
        assert torch.dot(projected, reference) >= -1e-5
        if torch.dot(g, reference) >= 0:
            assert torch.equal(projected, g)  # no conflict: untouched
        else:
            conflicts += 1
            assert torch.dot(projected, reference).abs() < 1e-4  # onto the boundary
    assert conflicts > 50


def test_agem_steps_with_a_gradient_that_does_not_raise_the_memory_loss():
    net = model()
    agem = build_method("agem", context("agem", batches=lambda epoch: iter([batch(0, 16)])),
                        METHODS.get("agem").Config(size=16))
    agem.end_task(net)  # task 1 ends: its samples join the memory
    assert len(agem.buffer) == 16 // 2
    inputs, labels = batch(1)
    params = [p for _, p in trainable(net)]
    grads = torch.autograd.grad(agem.loss(net, inputs, labels, PHASE), params)
    stepped = agem.on_gradients(net, list(grads), lr=0.01)
    memory_inputs, memory_labels = agem.buffer.inputs, agem.buffer.labels
    reference = torch.autograd.grad(torch.nn.functional.cross_entropy(net(memory_inputs), memory_labels), params)
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs])  # noqa: E731
    assert torch.dot(flat(stepped), flat(reference)) >= -1e-5


def test_der_replays_the_logits_stored_when_a_sample_was_seen():
    net = model()
    der = build_method("der", context("der"), METHODS.get("der").Config(size=8, alpha=0.4))
    inputs, labels = batch(0)
    der.loss(net, inputs, labels, PHASE)
    der.after_step()
    with torch.no_grad():
        stored = net(inputs)
    assert torch.equal(der.buffer.logits, stored)  # all 8 kept (capacity 8)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.9)  # the model moves on
    new_inputs, new_labels = batch(1)
    loss = der.loss(net, new_inputs, new_labels, PHASE)
    assert loss.item() > torch.nn.functional.cross_entropy(net(new_inputs), new_labels).item()
    # The replay term is α · MSE(model now, stored logits), over all 8 stored samples (drawn in
    # some order; the mean does not depend on it).
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(net(new_inputs), new_labels) + 0.4 * torch.nn.functional.mse_loss(
            net(inputs), stored)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_lump_trains_on_convex_mixes_of_current_and_replayed_inputs():
    net = model()
    lump = build_method("lump", context("lump"), METHODS.get("lump").Config(size=8, alpha=0.4))
    old, old_labels = batch(0)
    lump.loss(net, old, old_labels, PHASE)  # an empty buffer: plain cross-entropy
    lump.after_step()  # the buffer now holds these 8
    # λ and the replayed batch the next step draws, from copies of the method's own generators.
    mixing = random.Random()
    mixing.setstate(lump.mixing.getstate())
    replay, replay_labels, _, _ = twin(lump.buffer).sample(8)
    seen = []
    hook = net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    inputs, labels = batch(1)
    loss = lump.loss(net, inputs, labels, PHASE)
    hook.remove()
    lam = mixing.betavariate(0.4, 0.4)
    assert lump.last_mix == lam and 0.0 < lam < 1.0
    assert sorted(map(tuple, replay.flatten(1).tolist())) == sorted(map(tuple, old.flatten(1).tolist()))
    # The model saw one batch, each input a convex mix of a current and a replayed one.
    mixed = lam * inputs + (1 - lam) * replay
    assert len(seen) == 1 and torch.allclose(seen[0], mixed)
    low, high = torch.minimum(inputs, replay), torch.maximum(inputs, replay)
    assert ((seen[0] >= low - 1e-6) & (seen[0] <= high + 1e-6)).all()
    # It trains towards both labels, weighted by λ: the mixup loss of the model's output on that batch.
    logits = net(mixed)
    expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, replay_labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(F.cross_entropy(net(inputs), labels).item(), rel=1e-3)


def test_methods_that_need_whole_gradients_or_weights_refuse_zero3_before_training(tmp_path):
    from crdist.config import ConfigError
    from tests.helpers import study

    for name in ("agem", "si", "ewc"):
        with pytest.raises(ConfigError, match=rf"train.zero_stage: method {name} cannot run at ZeRO-3: "):
            study(train={"methods": [name], "zero_stage": 3})
    for name in ("er", "der", "derpp", "lump", "frozen", "sgd", "lpft"):
        study(train={"methods": [name], "zero_stage": 3})


# -- model.head: per_task: a sample's loss sees only its own task's classes -----------------------
# Each method's loss is checked against one computed by hand from the model's logits, for the
# current batch and for replayed samples of both tasks. The model is in eval mode, so a sample's
# logits do not depend on the batch it is in.


def own_task_cross_entropy(logits, labels, tasks) -> torch.Tensor:
    """The mean over rows of −log softmax over the row's own task's classes, at its label."""
    rows = [torch.logsumexp(row[classes(task)], 0) - row[label]
            for row, label, task in zip(logits, labels.tolist(), tasks.tolist())]
    return torch.stack(rows).mean()


def own_task_mse(logits, stored, tasks) -> torch.Tensor:
    """The mean squared difference over each row's own task's logits."""
    return torch.cat([(row[classes(task)] - old[classes(task)]) ** 2
                      for row, old, task in zip(logits, stored, tasks.tolist())]).mean()


def per_task_model():
    return model().eval()


def tasks_of(labels) -> torch.Tensor:
    return labels // 2 + 1


def test_a_per_task_head_needs_the_classes_of_every_task_so_far():
    from crdist.methods.base import HeadError

    only_task_1 = dataclasses.replace(context("sgd", task=2, head="per_task"), task_classes=((0, 1),))
    with pytest.raises(HeadError, match=r"per_task needs the classes of tasks 1\.\.2"):
        build_method("sgd", only_task_1)


@pytest.mark.parametrize("name, phase", [("sgd", 0), ("lpft", 0), ("lpft", 1), ("ewc", 0), ("si", 0)])
def test_methods_training_on_the_current_batch_mask_it_to_the_current_task(name, phase):
    net = per_task_model()
    method = build_method(name, context(name, task=2, head="per_task"), (METHODS.get(name).Config or (lambda: None))())
    method.start_task(net)
    phase = method.phases(10)[phase]
    inputs, labels = task_batch(0, task=2)
    loss = method.loss(net, inputs, labels, phase)
    logits = net(inputs)
    expected = own_task_cross_entropy(logits, labels, torch.full_like(labels, 2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-3)


def test_joint_masks_each_sample_to_the_classes_of_its_own_task():
    net = per_task_model()
    joint = build_method("joint", context("joint", task=2, head="per_task"))
    inputs, labels = batch(0)  # tasks 1 and 2 together, as joint's job streams them
    assert set(tasks_of(labels).tolist()) == {1, 2}
    loss = joint.loss(net, inputs, labels, PHASE)
    assert loss.item() == pytest.approx(own_task_cross_entropy(net(inputs), labels, tasks_of(labels)).item(), rel=1e-5)


def replay_method_at_task_2(name: str, **options):
    """``name`` at task 2 with a per-task head, its buffer carried from task 1 and, after one step of
    task 2, holding samples of both tasks; and a model in eval mode."""
    net = per_task_model()
    config = METHODS.get(name).Config(size=8, **options)
    first = build_method(name, context(name, task=1, head="per_task"), config)
    first.loss(net, *task_batch(0, task=1), PHASE)
    first.after_step()
    method = build_method(name, context(name, task=2, head="per_task"), config)
    method.load_state_dict(roundtrip(first.state_dict()))
    method.loss(net, *task_batch(1, task=2), PHASE)
    method.after_step()
    assert set(method.buffer.tasks.tolist()) == {1, 2}
    return net, method


def test_er_masks_current_and_replayed_samples_each_to_its_own_task():
    net, er = replay_method_at_task_2("er")
    replay, replay_labels, _, replay_tasks = twin(er.buffer).sample(8)
    inputs, labels = task_batch(2, task=2)
    loss = er.loss(net, inputs, labels, PHASE)
    expected = own_task_cross_entropy(net(torch.cat([inputs, replay])), torch.cat([labels, replay_labels]),
                                      torch.cat([torch.full_like(labels, 2), replay_tasks]))
    assert set(replay_tasks.tolist()) == {1, 2}
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["der", "derpp"])
def test_der_masks_its_cross_entropies_and_logit_matching_to_each_samples_own_task(name):
    options = {"alpha": 0.4} | ({"beta": 0.5} if name == "derpp" else {})
    net, der = replay_method_at_task_2(name, **options)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.9)  # the model moves on: its logits of a replayed sample are no longer the stored ones
    draws = twin(der.buffer)
    replay, _, stored, replay_tasks = draws.sample(8)
    inputs, labels = task_batch(2, task=2)
    loss = der.loss(net, inputs, labels, PHASE)
    expected = (own_task_cross_entropy(net(inputs), labels, torch.full_like(labels, 2))
                + 0.4 * own_task_mse(net(replay), stored, replay_tasks))
    if name == "derpp":  # a second replayed batch, trained on its labels
        second, second_labels, _, second_tasks = draws.sample(8)
        expected = expected + 0.5 * own_task_cross_entropy(net(second), second_labels, second_tasks)
    assert set(replay_tasks.tolist()) == {1, 2}
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_lump_masks_each_term_of_the_mixup_loss_to_its_samples_task():
    net, lump = replay_method_at_task_2("lump", alpha=0.4)
    mixing = random.Random()
    mixing.setstate(lump.mixing.getstate())
    replay, replay_labels, _, replay_tasks = twin(lump.buffer).sample(8)
    inputs, labels = task_batch(2, task=2)
    loss = lump.loss(net, inputs, labels, PHASE)
    lam = mixing.betavariate(0.4, 0.4)
    logits = net(lam * inputs + (1 - lam) * replay)
    expected = (lam * own_task_cross_entropy(logits, labels, torch.full_like(labels, 2))
                + (1 - lam) * own_task_cross_entropy(logits, replay_labels, replay_tasks))
    assert set(replay_tasks.tolist()) == {1, 2}
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_agem_masks_the_current_batch_and_its_memory_each_to_its_own_task():
    net = per_task_model()
    config = METHODS.get("agem").Config(size=8)
    state = {}
    for task in (1, 2):  # each task's end adds 8 // 2 of its samples to the memory
        agem = build_method("agem", context("agem", task=task, head="per_task",
                                            batches=lambda epoch, task=task: iter([task_batch(task, task)])), config)
        if state:
            agem.load_state_dict(roundtrip(state))
        agem.end_task(net)
        state = agem.state_dict()
    assert agem.buffer.tasks.tolist().count(1) == agem.buffer.tasks.tolist().count(2) == 4
    inputs, labels = task_batch(3, task=2)
    loss = agem.loss(net, inputs, labels, PHASE)
    assert loss.item() == pytest.approx(own_task_cross_entropy(net(inputs), labels, torch.full_like(labels, 2)).item(),
                                        rel=1e-5)
    memory, memory_labels, _, memory_tasks = twin(agem.buffer).sample(8)
    reference_loss = agem.memory_loss(net, torch.device("cpu"))  # the loss whose gradient is g_ref
    expected = own_task_cross_entropy(net(memory), memory_labels, memory_tasks)
    assert reference_loss.item() == pytest.approx(expected.item(), rel=1e-5)
