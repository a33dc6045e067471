"""The run directory: the unit of a study on disk (config, models, evaluations, logs, report), and
where each of its files lies. Read by the report and the trackers; the driver's claim on one (a
lock, and a config that must give the same results) is crdist/orchestrate/claim.py.

    runs/<name>/config.yaml            resolved config the run was started with
                journal.jsonl           every job started, finished or stopped (append-only)
                checkpoints/<method>/task-<i>/   mid-task checkpoints of the job in progress
                models/c_0.safetensors  the initial model, shared by every method
                models/<method>/c_<i>.safetensors
                models/<method>/c_<i>.train.json          the task's summary (steps, losses, times)
                models/<method>/c_<i>.state/rank-<r>.pt   the method's state after task i, per rank
                eval/c_0/0-<j>.json, eval/<method>/<i>-<j>.json
                (each of the files under models/ and eval/ with its digest beside it, <file>.xxh3)
                logs/driver.log, logs/events.jsonl, logs/train/*.log
                tracking/               the experiment trackers' files (tracking: section)
                ray/                    Ray Train's storage for the train jobs
                report/
                .driver.lock            held by the driver working on the run
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crdist.errors import CrdistError


class RunDirError(CrdistError, RuntimeError):
    pass


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def tracking(self) -> Path:
        return self.root / "tracking"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"

    @property
    def journal(self) -> Path:
        return self.root / "journal.jsonl"

    def checkpoints(self, method: str, task: int) -> Path:
        return self.root / "checkpoints" / method / f"task-{task}"

    def weights(self, method: str | None, row: int) -> Path:
        if row == 0:
            return self.root / "models" / "c_0.safetensors"
        return self.root / "models" / method / f"c_{row}.safetensors"

    def method_state(self, method: str, row: int) -> Path:
        """A method's state after task ``row`` (replay buffers, importances), one file per rank,
        written before the weights c_row; what the job of task row+1 starts from."""
        return self.root / "models" / method / f"c_{row}.state"

    def method_state_files(self, method: str, row: int, ranks: int) -> list[Path]:
        return [method_state_file(self.method_state(method, row), r) for r in range(ranks)]

    def evaluation(self, method: str | None, row: int, task: int) -> Path:
        folder = "c_0" if row == 0 else method
        return self.root / "eval" / folder / f"{row}-{task}.json"

    @staticmethod
    def checkpoint_label(method: str | None, row: int) -> str:
        return "c_0" if row == 0 else f"{method}/c_{row}"


def method_state_file(directory: str | Path, rank: int) -> Path:
    """One rank's file in a method-state directory (``RunDir.method_state``)."""
    return Path(directory) / f"rank-{rank}.pt"
