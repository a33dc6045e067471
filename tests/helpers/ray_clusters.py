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


_CLIENT = ("import ray; ray.init(address={address!r}, log_to_driver=False); "
           "print('ran', ray.get(ray.remote(num_cpus=0)(lambda: 6 * 7).remote()))")


def join_and_run(address: str, token: str | None, home) -> subprocess.Popen:
    """Another process on this machine joins ``address`` and runs code there: with ``token``
    (RAY_AUTH_TOKEN), or with none at all (a home without ~/.ray/auth_token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_AUTH_MODE="token")
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.Popen([sys.executable, "-c", _CLIENT.format(address=address)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def assert_door_shut(address: str, token: str, home, wrong_token: bool = True) -> None:
    """The cluster at ``address`` runs code for a client with its token and refuses one without a
    token: the refusal is the token's. With ``wrong_token``, one with another token is refused too.
    (The clients try at once: a wrong token is retried for about 20 s before Ray gives up.)"""
    clients = {"none": join_and_run(address, None, home), "right": join_and_run(address, token, home)}
    if wrong_token:
        clients["wrong"] = join_and_run(address, "0" * 64, home)
    said = {name: client.communicate(timeout=180)[0] for name, client in clients.items()}
    for name in ("none", "wrong") if wrong_token else ("none",):
        assert clients[name].returncode != 0 and "ran 42" not in said[name], f"{address} ran code with {name} token"
    assert "token" in said["none"].lower(), said["none"][-2000:]
    if wrong_token:
        assert "authentication token is missing or incorrect" in said["wrong"].lower(), said["wrong"][-2000:]
    assert clients["right"].returncode == 0 and "ran 42" in said["right"], said["right"][-3000:]


def token_of_this_user(private: bool = True) -> str:
    """Ray's token for clusters started by this user without RAY_AUTH_TOKEN, from its file; with
    ``private``, the file is checked readable by its owner only (as crdist and its launchers leave
    it; `ray start` alone writes it readable by all)."""
    from pathlib import Path

    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    mode = path.stat().st_mode & 0o777
    assert not private or mode & 0o077 == 0, f"{path} is readable by others: mode {mode:o}"
    return path.read_text().strip()
