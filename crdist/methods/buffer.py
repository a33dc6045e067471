"""A reservoir replay buffer, one per rank, that survives checkpoints bit for bit.

Reservoir sampling (Vitter's algorithm R) keeps each sample of the stream seen so far with equal
probability capacity / seen, whatever the stream's length, so the buffer is an unbiased sample of
every task trained so far. Under N ranks each rank keeps its own reservoir over its own share of
the stream, with the total ``size`` split across ranks (the first ``size % N`` ranks hold one
more); the union is then a reservoir of the whole stream in expectation. Each rank's draws come
from its own generator, seeded by (seed, method, rank), whose state is part of the buffer's state,
so a resumed run draws exactly what the uninterrupted one drew.

Inputs are image tensors or tokenised text (a dict of tensors); the buffer stores either, plus
labels, the task each sample came from, and optionally the logits the model gave it (DER).
"""

from __future__ import annotations

import torch

from crdist.data.samples import concat, take
from crdist.seeding import derive_seed


def rank_capacity(size: int, rank: int, world: int) -> int:
    return size // world + (1 if rank < size % world else 0)


class ReservoirBuffer:
    def __init__(self, capacity: int, seed: int, keep_logits: bool = False):
        self.capacity = capacity
        self.keep_logits = keep_logits
        self.seen = 0  # samples offered so far
        self.inputs: torch.Tensor | dict[str, torch.Tensor] | None = None
        self.labels = torch.zeros(0, dtype=torch.long)
        self.logits: torch.Tensor | None = None
        self.tasks = torch.zeros(0, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def for_rank(cls, size: int, seed: int, method: str, rank: int, world: int, keep_logits: bool = False):
        return cls(rank_capacity(size, rank, world), derive_seed(seed, "buffer", method, rank), keep_logits)

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, inputs, labels: torch.Tensor, task: int, logits: torch.Tensor | None = None) -> None:
        """Offer a batch, sample by sample: the first ``capacity`` fill the buffer; after that the
        n-th sample replaces a random slot with probability capacity / n."""
        inputs, labels = _cpu(inputs), labels.detach().cpu()
        logits = logits.detach().float().cpu() if logits is not None else None
        for i in range(len(labels)):
            self.seen += 1
            if len(self) < self.capacity:
                self._append(_row(inputs, i), labels[i], task, logits[i] if logits is not None else None)
                continue
            slot = int(torch.randint(0, self.seen, (1,), generator=self.generator))
            if slot < self.capacity:
                self._put(slot, _row(inputs, i), labels[i], task, logits[i] if logits is not None else None)

    def sample(self, count: int):
        """``count`` stored samples drawn without replacement (all of them when fewer):
        (inputs, labels, logits or None, tasks)."""
        count = min(count, len(self))
        index = torch.randperm(len(self), generator=self.generator)[:count]
        logits = self.logits[index] if self.logits is not None else None
        return take(self.inputs, index), self.labels[index], logits, self.tasks[index]

    @staticmethod
    def reshard(states: list[dict], world: int, seed: int, method: str) -> list[dict]:
        """The reservoirs of ``len(states)`` old ranks dealt out to ``world`` new ones (a resume on
        another number of workers). Every stored sample is kept: the total size does not change, and
        the samples are dealt in turn, so each new rank holds a mix of every old rank's. Each new
        reservoir has seen its share of what the old ones saw, and gets a generator of its own
        (seeded by the new rank and the old world size, so the resume is deterministic)."""
        size = sum(s["capacity"] for s in states)
        seen = sum(s["seen"] for s in states)
        held = [s for s in states if len(s["labels"])]
        pooled = {
            "inputs": concat([s["inputs"] for s in held]) if held else None,
            "labels": torch.cat([s["labels"] for s in states]),
            "tasks": torch.cat([s["tasks"] for s in states]),
            "logits": torch.cat([s["logits"] for s in held]) if held and held[0]["logits"] is not None else None,
        }
        out = []
        for rank in range(world):
            mine = torch.arange(rank, len(pooled["labels"]), world)
            generator = torch.Generator().manual_seed(derive_seed(seed, "buffer", method, rank, "resharded", len(states)))
            out.append({
                "capacity": rank_capacity(size, rank, world),
                "seen": rank_capacity(seen, rank, world),
                "inputs": take(pooled["inputs"], mine) if pooled["inputs"] is not None and len(mine) else None,
                "labels": pooled["labels"][mine],
                "logits": pooled["logits"][mine] if pooled["logits"] is not None and len(mine) else None,
                "tasks": pooled["tasks"][mine],
                "generator": generator.get_state(),
            })
        return out

    def nbytes(self) -> int:
        tensors = [self.labels, self.tasks] + ([self.logits] if self.logits is not None else [])
        tensors += list(self.inputs.values()) if isinstance(self.inputs, dict) else [self.inputs] if self.inputs is not None else []
        return sum(t.numel() * t.element_size() for t in tensors)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "seen": self.seen, "inputs": self.inputs, "labels": self.labels,
                "logits": self.logits, "tasks": self.tasks, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"a buffer of {state['capacity']} samples cannot be loaded into one of {self.capacity}")
        self.seen = state["seen"]
        self.inputs, self.labels, self.logits, self.tasks = state["inputs"], state["labels"], state["logits"], state["tasks"]
        self.generator.set_state(state["generator"])

    def _append(self, x, y, task, logits) -> None:
        self.inputs = _stack_onto(self.inputs, x)
        self.labels = torch.cat([self.labels, y.view(1)])
        self.tasks = torch.cat([self.tasks, torch.tensor([task])])
        if self.keep_logits:
            self.logits = logits.view(1, -1) if self.logits is None else torch.cat([self.logits, logits.view(1, -1)])

    def _put(self, slot, x, y, task, logits) -> None:
        if isinstance(self.inputs, dict):
            for k in self.inputs:
                self.inputs[k][slot] = x[k][0]
        else:
            self.inputs[slot] = x[0]
        self.labels[slot] = y
        self.tasks[slot] = task
        if self.keep_logits:
            self.logits[slot] = logits


def _cpu(inputs):
    if isinstance(inputs, dict):
        return {k: v.detach().cpu().clone() for k, v in inputs.items()}
    return inputs.detach().cpu().clone()


def _row(inputs, i):
    return take(inputs, slice(i, i + 1))


def _stack_onto(stored, row):
    return take(row, slice(None)) if stored is None else concat([stored, row])
