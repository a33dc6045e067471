"""Where DeepSpeed's JIT-built CPU comm op lives, known without importing torch or DeepSpeed.

DeepSpeed's CPU backend compiles a shared-memory comm op into ``TORCH_EXTENSIONS_DIR/<op name>`` on
first use. By default that folder is one per user (``~/.cache/torch_extensions/py311_<cuda>``),
shared by every Python environment: two environments whose torch lives at different paths then
rebuild the op in turn, each build about a minute on 2 cores with every other loader waiting on its
lock (a train job that started during such a build was seen waiting past its test's deadline). So
crdist defaults it to one folder per environment; ``TORCH_EXTENSIONS_DIR`` set by the user wins.

Asking whether the op is built through DeepSpeed costs an import of torch and DeepSpeed (about
8 s of CPU in a fresh process) that every study paid before its first train job could start; the
file check below costs nothing, and DeepSpeed is asked only when it finds no built op.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

COMM_OP = "ShareMemCommBuilder"  # DeepSpeed's builder class of the op, on its CPU accelerator
COMM_OP_NAME = "deepspeed_shm_comm"  # that builder's ``name``: the op's folder under the root below


def extensions_root() -> Path:
    """The folder torch builds extensions into for this process (set in the environment, so the
    processes it starts, and Ray's workers on this machine, build into the same one)."""
    default = Path.home() / ".cache" / "torch_extensions" / f"env-{hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]}"
    return Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(default)))


def comm_op_built() -> bool:
    """Whether the CPU comm op's shared library is already in its folder (no imports)."""
    return any((extensions_root() / COMM_OP_NAME).glob("*.so"))
