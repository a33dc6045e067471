"""Batches onto the training device. On CUDA each batch is pinned (page-locked) and copied with
``non_blocking=True`` on a copy stream of its own, and the next batch's copy is queued before the
current batch is handed to the step, so the transfer runs while the step computes; on any other
device (the CPU) a batch is moved as it is asked for, as before.

Why: a copy from pageable host memory is synchronous (CUDA stages it through a pinned buffer of its
own), so the GPU would wait for every batch's transfer. From pinned memory the copy engine transfers
while the compute stream runs, and queuing batch k+1's copy before step k hides it behind the step
(the pattern of NVIDIA's apex data prefetcher). The compute stream waits for a batch's copy event
before using it, and each moved tensor is recorded on the compute stream so that the caching
allocator does not hand its memory to the copy stream again while a step may still read it; the
pinned host buffers are kept alive by PyTorch's host allocator until their copies complete.

Exactness: the same values in the same order; only where and when the copy runs changes. Reading
one batch ahead does not change which samples a step sees: the stream's order is fixed by its
seed and position, not by when a batch is read.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol

import torch

from crdist.data.samples import Inputs, to_device

Batch = tuple[Inputs, torch.Tensor]


def device_feed(batches: Iterable[Batch], device: torch.device | str) -> Iterator[Batch]:
    """``batches`` on ``device``; on CUDA through pinned memory, one batch's copy ahead of the step."""
    device = torch.device(device)
    if device.type == "cuda":
        return overlapped(batches, CudaCopier(device))
    return ((to_device(inputs, device), labels.to(device)) for inputs, labels in batches)


class Copier(Protocol):
    """How ``overlapped`` moves a batch: ``issue`` queues its copy and returns a handle at once;
    ``ready`` makes the consumer wait for that copy and returns the moved batch."""

    def issue(self, batch: Batch) -> object: ...

    def ready(self, handle: object) -> Batch: ...


def overlapped(batches: Iterable[Batch], copier: Copier) -> Iterator[Batch]:
    """Each batch's copy is issued before the previous batch is yielded: while the consumer works
    on batch k, batch k+1 is in flight."""
    source = iter(batches)
    first = next(source, None)
    ahead = copier.issue(first) if first is not None else None
    while ahead is not None:
        current = ahead
        upcoming = next(source, None)
        ahead = copier.issue(upcoming) if upcoming is not None else None
        yield copier.ready(current)


class CudaCopier:
    """Pinned host memory, a copy stream of its own, an event per batch."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def issue(self, batch: Batch) -> tuple[Batch, torch.cuda.Event]:
        inputs, labels = batch
        with torch.cuda.stream(self.stream):
            moved = (_each(inputs, self._copy), self._copy(labels))
            copied = torch.cuda.Event()
            copied.record(self.stream)
        return moved, copied

    def ready(self, handle: tuple[Batch, torch.cuda.Event]) -> Batch:
        (inputs, labels), copied = handle
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(copied)
        for tensor in (*_tensors(inputs), labels):
            tensor.record_stream(compute)  # allocated on the copy stream, used on the compute stream
        return inputs, labels

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        host = tensor if tensor.is_pinned() else tensor.pin_memory()
        return host.to(self.device, non_blocking=True)


def _each(inputs: Inputs, fn) -> Inputs:
    return {k: fn(v) for k, v in inputs.items()} if isinstance(inputs, dict) else fn(inputs)


def _tensors(inputs: Inputs) -> list[torch.Tensor]:
    return list(inputs.values()) if isinstance(inputs, dict) else [inputs]
