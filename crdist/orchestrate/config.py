from __future__ import annotations

from dataclasses import dataclass

from crdist.config import require


@dataclass(frozen=True)
class ClusterConfig:
    """The Ray cluster the study runs on: one to join, or a local one to start."""

    address: str | None = None
    """Ray cluster to join ("auto", "ray://host:10001", "host:6379"); null = $RAY_ADDRESS, else
    start a local one (crdist run --address overrides it)."""
    num_cpus: int | None = None
    """Logical CPUs of a local cluster; null = enough for one train job and one evaluation at a
    time (at least the machine's core count), so evaluations overlap training."""
    dashboard: bool = False
    """Ray dashboard of a local cluster, bound to 127.0.0.1."""

    def validate(self) -> None:
        require(self.num_cpus is None or self.num_cpus >= 1, "num_cpus", f"must be at least 1 (got {self.num_cpus})")
