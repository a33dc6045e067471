"""What the methods with a replay buffer (er, der, derpp, lump, agem) share: a reservoir buffer per
rank, the batch it takes after each step, its place in the method's state, and how it is dealt out
again for another number of workers. Each of those methods keeps only what it does with the
samples it replays.

Distributed: one reservoir per rank over that rank's share of the stream, the total ``size``
split across ranks, seeded per (seed, method, rank) (see ``buffer.py``). Inputs are stored as the
model sees them (normalised images, or token ids), beside their labels and the task each came from,
which is what ``model.head: per_task`` masks a replayed sample's logits to (see
:meth:`~crdist.methods.base.Method.task_logits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crdist.config import require
from crdist.data.samples import to_device
from crdist.methods.base import Method, MethodContext
from crdist.methods.buffer import ReservoirBuffer


@dataclass(frozen=True)
class ReplayConfig:
    """The replay buffer's options, the same for every method with one."""

    size: int = 256
    """Samples the replay buffer holds, over all ranks (the paper's code: 256)."""

    def validate(self) -> None:
        require(self.size >= 1, "size", f"must be at least 1 (got {self.size})")


class ReplayMethod(Method):
    """A method with a reservoir buffer (``self.buffer``) that its state carries from task to task."""

    keeps_logits = False  # whether the buffer also stores the model's logits of each sample (der)
    state_key = "buffer"  # the buffer's key in the method's state, as saved states hold it

    def __init__(self, context: MethodContext, config: ReplayConfig):
        super().__init__(context, config)
        self.buffer = ReservoirBuffer.for_rank(config.size, context.seed, self.name, context.rank, context.world,
                                               keep_logits=self.keeps_logits)
        self._to_store = None  # this step's batch, for after_step

    def store_after_step(self, inputs, labels: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """Offer this batch to the buffer once the optimizer step is done, so that a step never
        replays the batch it trains on."""
        self._to_store = (inputs, labels, logits)

    def after_step(self) -> None:
        if self._to_store is not None:
            inputs, labels, logits = self._to_store
            self.buffer.add(inputs, labels, self.context.task.index, logits=logits)
            self._to_store = None

    def replay(self, count: int, device):
        """``count`` samples drawn from the buffer (all of them when it holds fewer), on ``device``:
        (inputs, labels, stored logits or None, tasks)."""
        inputs, labels, logits, tasks = self.buffer.sample(count)
        return (to_device(inputs, device), labels.to(device), logits.to(device) if logits is not None else None,
                tasks.to(device))

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {self.state_key: self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state[self.state_key])

    @classmethod
    def reshard_state(cls, states: list[dict], world: int, seed: int) -> list[dict]:
        """Every rank holds a reservoir of its own: they are pooled and dealt out to ``world`` ranks
        (see :meth:`ReservoirBuffer.reshard`)."""
        buffers = ReservoirBuffer.reshard([s[cls.state_key] for s in states], world, seed, cls.name)
        return [{cls.state_key: buffer} for buffer in buffers]
