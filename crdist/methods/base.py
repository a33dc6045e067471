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
state.
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
    classes_so_far: tuple[int, ...] = ()  # the classes of tasks 1..task

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
        self._mask = None
        if context.head == "per_task":
            mask = torch.ones(context.num_classes, dtype=torch.bool)
            mask[context.task.classes] = False
            self._mask = mask  # True where a logit belongs to another task

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
        return F.cross_entropy(self.task_logits(model(inputs, freeze_backbone=not phase.train_backbone)), labels)

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

    def task_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """With ``model.head: per_task``, the logits of the other tasks' classes masked out."""
        if self._mask is None:
            return logits
        return logits.masked_fill(self._mask.to(logits.device), float("-inf"))


class ReshardError(CrdistError, ValueError):
    pass


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
