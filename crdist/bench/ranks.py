"""Ranks without Ray, for the benchmarks: one fresh interpreter per rank (as ``torchrun`` starts
them), with the environment torch.distributed and Accelerate read, on loopback."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(main, world: int, *args) -> None:
    """Run ``main(rank, world, *args)`` in ``world`` spawned processes and wait for all of them."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(main, world, free_port(), args), nprocs=world, join=True)


def _rank(rank: int, main, world: int, port: int, args: tuple) -> None:
    with rank_environment(rank, world, port):
        main(rank, world, *args)


@contextmanager
def rank_environment(rank: int, world: int, port: int):
    """This process as rank ``rank`` of ``world`` on loopback; its process group, if one was made
    inside, is destroyed on the way out.

    Destroying it matters: a process that exits with its gloo group alive may abort (SIGABRT)
    while the interpreter shuts down, when gloo's threads free the tensors of its last collective
    without the interpreter they need (pytorch/pytorch#179291). Under Ray Train, Ray destroys it.
    """
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
