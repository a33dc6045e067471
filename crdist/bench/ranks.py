"""Ranks without Ray, for the benchmarks: one fresh interpreter per rank (as ``torchrun`` starts
them), with the environment torch.distributed and Accelerate read, on loopback."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(main, world: int, *args) -> None:
    """Run ``main(rank, world, *args)`` in ``world`` spawned processes and wait for all of them."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(main, world, free_port(), args), nprocs=world, join=True)


def _rank(rank: int, main, world: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    main(rank, world, *args)
