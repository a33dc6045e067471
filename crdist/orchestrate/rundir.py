"""The run directory: the unit of a study on disk (config, models, evaluations, logs, report).

    runs/<name>/config.yaml            resolved config the run was started with
                models/c_0.safetensors  the initial model, shared by every method
                models/<method>/c_<i>.safetensors
                eval/c_0/0-<j>.json, eval/<method>/<i>-<j>.json
                logs/driver.log, logs/events.jsonl, logs/train/*.log
                ray/                    Ray Train's storage for the train jobs
                report/
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml

from crdist import config
from crdist.atomic import write_text


class RunDirError(RuntimeError):
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
    def ray_storage(self) -> Path:
        return self.root / "ray"

    def weights(self, method: str | None, row: int) -> Path:
        if row == 0:
            return self.root / "models" / "c_0.safetensors"
        return self.root / "models" / method / f"c_{row}.safetensors"

    def evaluation(self, method: str | None, row: int, task: int) -> Path:
        folder = "c_0" if row == 0 else method
        return self.root / "eval" / folder / f"{row}-{task}.json"

    @staticmethod
    def checkpoint_label(method: str | None, row: int) -> str:
        return "c_0" if row == 0 else f"{method}/c_{row}"

    def open(self, study) -> bool:
        """Create the run directory, or accept an existing one started with the same config.

        Returns True when the directory already existed (finished jobs are then reused).
        """
        wanted = yaml.safe_dump(config.to_dict(study), sort_keys=False)
        if self.config_file.is_file():
            existing = self.config_file.read_text()
            if existing != wanted:
                diff = "".join(
                    list(difflib.unified_diff(existing.splitlines(True), wanted.splitlines(True), "existing", "new"))[
                        2:40
                    ]
                )
                raise RunDirError(
                    f"{self.root} was started with a different config; refusing to mix results. "
                    f"Use another --name, or delete the directory to start over. Differences:\n{diff}"
                )
            return True
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.logs, self.report, self.root / "models", self.root / "eval"):
            folder.mkdir(parents=True, exist_ok=True)
        write_text(self.config_file, wanted)
        return False
