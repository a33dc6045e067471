"""Clusters that tests start with `ray start`, and stop again without touching any other Ray on the
machine (`ray stop --force` would end every Ray process there, a user's running study included)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import psutil

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def ray_start(temp_dir: str, *args: str, env: dict | None = None) -> None:
    """`ray start ARGS` with this cluster's own temp dir, which every one of its services names on
    its command line. A node that joins gets the head's temp dir without being told."""
    head = "--head" in args
    command = [*RAY, "start", *args, *([f"--temp-dir={temp_dir}"] if head else []), "--disable-usage-stats"]
    for attempt in (1, 2):
        # `ray start --head` once exited 1 in a suite run before writing anything to its temp dir,
        # and did not again by hand: a head tries once more; Ray's own words if that fails too.
        done = subprocess.run(command, env=env or {**os.environ, "RAY_AUTH_MODE": "token"}, capture_output=True,
                              text=True, timeout=120)
        if done.returncode == 0:
            return
        if not head:
            break  # a joining node's temp dir is its head's: stopping it would stop the head
        if attempt == 1:
            ray_stop(temp_dir)
            time.sleep(3)
    raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def new_temp_dir() -> str:
    # Short: Ray's unix sockets live under it, and a socket path may hold 107 characters.
    return tempfile.mkdtemp(prefix="crt-", dir="/tmp")


def ray_stop(temp_dir: str, grace: float = 10.0) -> None:
    """End the services of the cluster started with ``temp_dir`` and everything they started
    (workers, agents): SIGTERM, then SIGKILL after ``grace`` seconds."""
    services = [p for p in psutil.process_iter(["cmdline"])
                if any(temp_dir in part for part in (p.info["cmdline"] or []))]
    family = set(services)
    for p in services:
        try:
            family.update(p.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for p in family:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
