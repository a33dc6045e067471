from __future__ import annotations

import re
from dataclasses import dataclass

from crdist.config import require


@dataclass(frozen=True)
class TrackingConfig:
    """Which experiment trackers the driver feeds; each writes under <run>/tracking/ (docs/tracking.md)."""

    tensorboard: bool = False
    """TensorBoard event files in <run>/tracking/tensorboard."""
    mlflow: bool = False
    """An MLflow run in the store at mlflow_uri."""
    mlflow_uri: str | None = None
    """MLflow's tracking store: a file: URI; null = a file store in <run>/tracking/mlflow."""
    mlflow_experiment: str = "crdist"
    """The MLflow experiment the run is logged under."""
    wandb: bool = False
    """A W&B run, always offline (no network); `wandb sync` uploads it later."""
    wandb_project: str = "crdist"
    """The W&B project the run is logged under."""

    def enabled(self) -> list[str]:
        """The trackers turned on, by key."""
        return [key for key in ("tensorboard", "mlflow", "wandb") if getattr(self, key)]

    def validate(self) -> None:
        # Only file stores: they need nothing but the extra's mlflow-skinny (no database driver,
        # no server) and keep the run self-contained.
        require(self.mlflow_uri is None or self.mlflow_uri.startswith("file:"), "mlflow_uri",
                f"must be a file: URI (e.g. file:///data/mlruns) or null for <run>/tracking/mlflow "
                f"(got {self.mlflow_uri!r})")
        require(bool(self.mlflow_experiment.strip()), "mlflow_experiment", "must not be empty")
        require(re.fullmatch(r"[^/\\#?%:]{1,128}", self.wandb_project) is not None, "wandb_project",
                f"must be 1 to 128 characters, none of / \\ # ? % : (got {self.wandb_project!r})")
