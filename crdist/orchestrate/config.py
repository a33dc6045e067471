from __future__ import annotations

from dataclasses import dataclass

from crdist.config import require


@dataclass(frozen=True)
class ClusterConfig:
    # Ray cluster to join ("auto", "ray://host:10001", "host:6379"); null = start a local one.
    address: str | None = None
    # Logical CPUs of a local cluster; null = enough for one train job and one evaluation at a
    # time (at least the machine's core count), so evaluations overlap training.
    num_cpus: int | None = None
    # Ray dashboard of a local cluster, bound to 127.0.0.1.
    dashboard: bool = False

    def validate(self) -> None:
        require(self.num_cpus is None or self.num_cpus >= 1, "num_cpus", f"must be at least 1 (got {self.num_cpus})")
