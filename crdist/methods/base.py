"""The interface every continual-learning method implements, and what a method may know.

A method is one module in this package, registered with ``@METHODS.register(name)``, that owns
everything it needs:

- **its config section**: a frozen dataclass ``Config`` (or None) becomes the study's
  ``<name>:`` section, so ``--set der.alpha=0.3`` works and is validated like every other key;
- **its state**: ``state_dict()`` / ``load_state_dict()``, saved by every rank in every mid-task
  checkpoint (so a resumed task continues bit for bit) and carried from task i's job to task
  i+1's (per rank; written before the weights c_i, whose presence means the job is done);
- **its hooks**, which the training loop calls in this order on every rank:

      start_task(model)              a fresh task, after the state carried from the last one is loaded
      phases(total_steps)            step ranges, each with its own learning rate and optimizer state
      loss(model, x, y, phase)       every step; may draw from a replay buffer
      on_gradients(model, grads, lr) between backward and the optimizer step, for a method that
                                     sets ``hooks_gradients``: gets the step's gradient (averaged
                                     over ranks, before clipping), returns the one to step with
      after_step()                   every step, after the optimizer step (e.g. buffer updates)
      end_task(model)                after the task's last step; collectives allowed

- **the ZeRO stages it runs at**: ``zero_stages``, and ``zero_stage_limit`` saying why not the
  others. The study refuses, before anything trains, a method at a stage it cannot run at.

The defaults are plain supervised training: one phase, cross-entropy through the whole model, no
state. Methods with a replay buffer build on :class:`~crdist.methods.replay.ReplayMethod`.

**The head rule.** With ``model.head: per_task`` a sample's loss sees only the logits of its own
task's classes: every loss a method computes on samples goes through :meth:`Method.task_logits`,
which sets the others to −inf (or :meth:`Method.task_mask`, which selects its task's logits, for
a loss that compares logits, as DER's does). The current batch belongs to the task being trained
(joint's batches mix tasks 1..i: :meth:`Method.batch_tasks`); a replayed sample belongs to the
task it was stored from, which the buffer keeps beside its label. With ``model.head: shared``
every loss sees every logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from crdist.data.manifest import TaskRecord
from crdist.errors import CrdistError


@dataclass(frozen=True)
class Phase:
    name: str
    steps: int
    train_backbone: bool  # False: backbone frozen (no gradients, BatchNorm statistics fixed)
    lr: float  # peak learning rate of this phase's schedule


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the task it trains on and the rank it runs in."""

    method: str
    task: TaskRecord
    num_tasks: int
    num_classes: int
    modality: str  # "image" or "text"
    head: str  # "shared" or "per_task"
    lr: float  # the study's train.lr
    seed: int
    rank: int = 0
    world: int = 1
    zero_stage: int = 0
    device: torch.device = torch.device("cpu")
    # This rank's (inputs, labels) batches of the task's train split in one epoch (the same
    # order training used), for a method that reads the task's data at task end.
    batches: Callable[[int], Iterator] | None = None
    # The classes of each task 1..task, in order (task_classes[t - 1] is task t's): what the
    # per-task head masks a sample to. Required with head "per_task".
    task_classes: tuple[tuple[int, ...], ...] = ()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (a collective: every rank must call it)."""
        if self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor)
            tensor /= self.world
        return tensor


class Method:
    name = "base"
    Config = None  # a frozen dataclass: the method's own config section
    zero_stages: tuple[int, ...] = (0, 1, 2, 3)
    zero_stage_limit = ""  # why not the other stages
    modalities: tuple[str, ...] = ("image", "text")  # the inputs it can train on
    hooks_gradients = False  # whether on_gradients runs

    def __init__(self, context: MethodContext, config=None):
        self.context = context
        self.config = config
        # model.head: per_task: row t is True where a class is not task t's (row 0 is no task).
        self._outside_task = _classes_outside_each_task(context) if context.head == "per_task" else None

    @classmethod
    def tasks_to_stream(cls, task: int) -> tuple[int, ...]:
        """The tasks whose train splits the job of ``task`` trains on: that task alone, by default."""
        return (task,)

    # -- hooks -----------------------------------------------------------------------------------

    def start_task(self, model) -> None:
        pass

    def phases(self, total_steps: int) -> list[Phase]:
        return [Phase("train", total_steps, train_backbone=True, lr=self.context.lr)]

    def loss(self, model, inputs, labels: torch.Tensor, phase: Phase) -> torch.Tensor:
        logits = model(inputs, freeze_backbone=not phase.train_backbone)
        return F.cross_entropy(self.task_logits(logits, self.batch_tasks(labels)), labels)

    def on_gradients(self, model, grads: list[torch.Tensor], lr: float) -> list[torch.Tensor]:
        return grads

    def after_step(self) -> None:
        pass

    def end_task(self, model) -> None:
        pass

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @classmethod
    def reshard_state(cls, states: list[dict], world: int, seed: int) -> list[dict]:
        """The per-rank states that ``len(states)`` ranks wrote, for ``world`` ranks (a resume on
        another number of workers). A state that is the same on every rank (an all-reduced Fisher,
        importances from the averaged gradient) goes to every new rank as it is; a method whose
        ranks hold different state (a replay buffer per rank) overrides this."""
        if all(_same(states[0], other) for other in states[1:]):
            return [states[0]] * world
        raise ReshardError(f"{cls.name}: its {len(states)} workers hold different state, which it cannot "
                           f"re-shard for {world}; resume it with train.workers={len(states)}")

    def state_bytes(self) -> int:
        """Memory this method holds on this rank (buffers, importances), for the logs."""
        return sum(t.numel() * t.element_size() for t in _tensors(self.state_dict()))

    # -- helpers ---------------------------------------------------------------------------------

    def task_logits(self, logits: torch.Tensor, tasks: torch.Tensor | None = None) -> torch.Tensor:
        """The head rule, the one place it is applied: with ``model.head: per_task`` each row's
        logits outside its own task's classes are set to −inf, so a loss on them sees only its
        task's classes; with ``model.head: shared`` the logits unchanged. ``tasks``: the task of
        each row (a replayed sample's is the one it was stored from); None: every row is the
        current task's."""
        if self._outside_task is None:
            return logits
        outside = self._outside_task.to(logits.device)
        outside = outside[self.context.task.index] if tasks is None else outside[tasks.to(logits.device)]
        return logits.masked_fill(outside, float("-inf"))

    def task_mask(self, tasks: torch.Tensor) -> torch.Tensor | None:
        """(rows, classes), True where a logit is of the row's own task; None with a shared head
        (every logit counts). For a loss on logits that masking with −inf would break (DER's MSE)."""
        if self._outside_task is None:
            return None
        return ~self._outside_task.to(tasks.device)[tasks]

    def batch_tasks(self, labels: torch.Tensor) -> torch.Tensor | None:
        """The task of each sample of the current batch, for :meth:`task_logits`; None: all are the
        current task's, as for every method whose job streams that task alone."""
        return None


class ReshardError(CrdistError, ValueError):
    pass


class HeadError(CrdistError, ValueError):
    pass


def _classes_outside_each_task(context: MethodContext) -> torch.Tensor:
    """Row t of the per-task head's mask: True where a class is not task t's."""
    if len(context.task_classes) < context.task.index:
        raise HeadError(f"model.head: per_task needs the classes of tasks 1..{context.task.index} "
                        f"(MethodContext.task_classes holds {len(context.task_classes)})")
    outside = torch.ones(len(context.task_classes) + 1, context.num_classes, dtype=torch.bool)
    for task, classes in enumerate(context.task_classes, start=1):
        outside[task, list(classes)] = False
    return outside


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def unwrap(model):
    """The model inside the DeepSpeed engine. A method differentiates through it with
    ``torch.autograd.grad`` (a Fisher, a memory gradient): the engine's own forward hooks would
    take that for a training backward and reduce gradients that were never bucketed."""
    return getattr(model, "module", model)


def trainable(model) -> list[tuple[str, torch.Tensor]]:
    """The named parameters a method regularises: the unwrapped model's (under ZeRO 0–2 every
    rank holds them whole)."""
    return [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]


def method_class(name: str) -> type[Method]:
    from crdist.methods import METHODS

    return METHODS.get(name)


def build_method(name: str, context: MethodContext, config=None) -> Method:
    return method_class(name)(context, config)
