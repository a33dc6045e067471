"""MLflow: one MLflow run per crdist run, in a file store (by default <run>/tracking/mlflow).

A resumed crdist run continues the same MLflow run: it is found again by its name and a tag that
holds the run directory. The report's files become the run's artifacts under report/.

MLflow 3.17 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true (it steers users to a database
store, which needs SQLAlchemy, not part of mlflow-skinny); this tracker sets it while it is open,
and whoever reads the store (`mlflow ui`, a client) sets it too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from crdist.track.scalars import Scalar

RUN_DIR_TAG = "crdist.run_dir"
_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


class MLflowTracker:
    key = "mlflow"
    label = "MLflow"

    def __init__(self, uri: str, experiment: str, run_name: str, run_root: Path):
        self.allowed_before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        try:
            self.run_id = self._find_or_start_run(uri, experiment, run_name, run_root)
        except BaseException:
            self._restore_allowed()
            raise

    def _find_or_start_run(self, uri: str, experiment: str, run_name: str, run_root: Path) -> str:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        directory = str(run_root.resolve())
        same_run = f"attributes.run_name = '{_quoted(run_name)}' and tags.`{RUN_DIR_TAG}` = '{_quoted(directory)}'"
        earlier = self.client.search_runs([experiment_id], filter_string=same_run, max_results=1)
        if earlier:
            self.client.update_run(earlier[0].info.run_id, status="RUNNING")
            return earlier[0].info.run_id
        return self.client.create_run(experiment_id, run_name=run_name, tags={RUN_DIR_TAG: directory}).info.run_id

    def log(self, scalars: list[Scalar], number: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(s.tag, s.value, now, s.step) for s in scalars]
        for start in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + _BATCH])

    def publish(self, report_dir: Path, step: int) -> None:
        self.client.log_artifacts(self.run_id, str(report_dir), artifact_path="report")

    def close(self, outcome: str) -> None:
        try:
            self.client.set_terminated(self.run_id, _STATUS[outcome])
        finally:
            self._restore_allowed()

    def _restore_allowed(self) -> None:
        if self.allowed_before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = self.allowed_before


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
