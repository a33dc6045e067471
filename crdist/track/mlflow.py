"""MLflow: one MLflow run per crdist run, on a tracking server (``http(s)://``) or in a file store
(by default <run>/tracking/mlflow).

A resumed crdist run continues the same MLflow run: it is found again by its name and a tag that
holds the run directory. The report's files become the run's artifacts under report/ (on a server,
through its artifact proxy, or wherever its artifact store is).

A server's credentials are MLflow's business: its client reads MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, from the environment; crdist never reads or
writes them (and refuses a URI that holds them, as the URI is written into the run's config).

MLflow 3.17 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true (it steers users to a database
store, which needs SQLAlchemy, not part of mlflow-skinny); this tracker sets it while it is open,
and whoever reads the store (`mlflow ui`, a client) sets it too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from crdist.errors import CrdistError
from crdist.track.scalars import Scalar

RUN_DIR_TAG = "crdist.run_dir"
# The driver logs between its other work, so a server that stops answering must not hold it for
# long: MLflow's own defaults retry a request 7 times with a backoff factor of 2, each try waiting up
# to 120 s, many minutes before the tracker could be turned off. With these, a server that refuses
# connections fails a request in seconds, and one that hangs in about 35 s (3 tries of 10 s of
# silence each). They apply unless the environment sets them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                 # MLflow writes the run's link straight to stdout when the run ends, past crdist's
                 # console and its log; the driver prints it once, when the tracker starts (``where``).
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


class MLflowTracker:
    key = "mlflow"
    label = "MLflow"

    def __init__(self, uri: str, experiment: str, run_name: str, run_root: Path):
        if uri.startswith(("http://", "https://")):
            for key, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(key, value)
            _check_server(uri)
        self.allowed_before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        try:
            self.run_id = self._find_or_start_run(uri, experiment, run_name, run_root)
        except BaseException:
            self._restore_allowed()
            raise
        # Where to look: the run's page on a server, the store otherwise.
        self.where = (f"{uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
                      if uri.startswith("http") else uri)

    def _find_or_start_run(self, uri: str, experiment: str, run_name: str, run_root: Path) -> str:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.experiment_id = experiment_id
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


class ServerDown(CrdistError, RuntimeError):
    """No MLflow tracking server answers at the configured URI."""


def _check_server(uri: str, timeout: float = 10.0) -> None:
    """Stop at the start, in one line, when nothing answers at ``uri`` (MLflow's client would retry
    for its whole budget, then fail deep in a request). Any HTTP answer counts as an answer: a
    proxy that wants credentials for /health says so later, in MLflow's own error."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ServerDown(f"tracking.mlflow_uri: no MLflow tracking server answers at {uri} ({reason}); "
                         "start it, point mlflow_uri at one that runs, or set tracking.mlflow=false") from None
