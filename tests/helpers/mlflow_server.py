"""A real MLflow tracking server on loopback, for the tests that log to one: `mlflow server` from the
full `mlflow` package that tests/run installs apart (tests/helpers/install_apart.py), a SQLite
store and a served artifact folder under the test's directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.helpers.ray_clusters import free_port

SERVER_PACKAGES = Path(sys.prefix) / "mlflow-server"


@contextmanager
def mlflow_server(directory: Path) -> Iterator["Server"]:
    """Start a server storing into ``directory``; yields it (``.uri``, ``.stop()``); stops it afterwards."""
    assert (SERVER_PACKAGES / ".complete").is_file(), f"no MLflow server in {SERVER_PACKAGES}; tests/run --all installs it"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SERVER_PACKAGES), *filter(None, [os.environ.get("PYTHONPATH")])])}
    log = open(directory / "server.log", "a")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{directory / 'store.sqlite'}",
         "--artifacts-destination", str(directory / "artifacts")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the MLflow server did not start:\n{(directory / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield Server(uri, server)
    finally:
        Server(uri, server).stop()


class Server:
    def __init__(self, uri: str, process: subprocess.Popen):
        self.uri, self.process = uri, process

    def stop(self) -> None:
        """End the server and its workers (its whole process group); once ended, nothing."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
