from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from crdist.config import require


@dataclass(frozen=True)
class TrackingConfig:
    """Which experiment trackers the driver feeds; each writes under <run>/tracking/ (docs/tracking.md)."""

    tensorboard: bool = False
    """TensorBoard event files in <run>/tracking/tensorboard."""
    mlflow: bool = False
    """An MLflow run in the store at mlflow_uri."""
    mlflow_uri: str | None = None
    """MLflow's tracking store: an http(s):// tracking server, or a file: URI; null = a file store in
    <run>/tracking/mlflow. A server's credentials go in MLflow's own environment variables
    (MLFLOW_TRACKING_USERNAME and _PASSWORD, or MLFLOW_TRACKING_TOKEN), never in the URI."""
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
        # A tracking server, or a file store: both need nothing but the extra's mlflow-skinny (a
        # database store needs a driver, and is what a server is for).
        uri = self.mlflow_uri
        require(uri is None or uri.startswith(("file:", "http://", "https://")), "mlflow_uri",
                f"must be an http(s):// tracking server (e.g. http://mlflow.internal:5000), a file: URI "
                f"(e.g. file:///data/mlruns), or null for <run>/tracking/mlflow (got {uri!r})")
        # The config is written into the run directory: a password in the URI would be written too.
        require(uri is None or not uri.startswith("http") or "@" not in urlsplit(uri).netloc, "mlflow_uri",
                "must not hold credentials (they would be written into the run directory's config.yaml); "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, instead")
        require(bool(self.mlflow_experiment.strip()), "mlflow_experiment", "must not be empty")
        require(re.fullmatch(r"[^/\\#?%:]{1,128}", self.wandb_project) is not None, "wandb_project",
                f"must be 1 to 128 characters, none of / \\ # ? % : (got {self.wandb_project!r})")
