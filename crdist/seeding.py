"""Seeds derived from a study seed and a job's coordinates, without collisions between jobs."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed unique to ``parts`` (e.g. study seed, "train", method, task, rank)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
