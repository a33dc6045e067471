"""Weights & Biases, offline only: the run is written under <run>/tracking/wandb/ and never sent
anywhere; `wandb sync` uploads it later.

Each driver run opens the same W&B run (its id comes from the run's name and directory,
resume="allow") and writes a new offline-run-* directory for it. W&B has one step per run, which
must only grow, while crdist's series count different things (global train steps, tasks,
checkpoints). So W&B's step is the event's line number in events.jsonl, which grows across resumed
runs too, and every tag is plotted against its own step metric (define_metric), logged beside it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from crdist.track.scalars import Scalar


def run_id(run_name: str, run_root: Path) -> str:
    """The same id for every driver run of one run directory, and different ids for different ones."""
    digest = hashlib.sha256(str(run_root.resolve()).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', run_name)[:40]}-{digest}"


class WandbTracker:
    key = "wandb"
    label = "W&B"

    def __init__(self, directory: Path, project: str, run_name: str, run_root: Path):
        self.mode_before = os.environ.get("WANDB_MODE")
        os.environ["WANDB_MODE"] = "offline"  # also for anything W&B starts in another process
        try:
            import wandb

            directory.mkdir(parents=True, exist_ok=True)
            # Quiet on the driver's terminal (W&B's own setup decides that), and nothing taken
            # from the driver: not its terminal output, code, git state or machine stats.
            settings = wandb.Settings(silent=True, show_warnings=False, console="off", save_code=False,
                                      disable_git=True, x_disable_stats=True, x_save_requirements=False)
            wandb.setup(settings=settings)
            self.run = wandb.init(project=project, name=run_name, id=run_id(run_name, run_root), dir=str(directory),
                                  mode="offline", resume="allow", reinit="create_new", settings=settings)
        except BaseException:
            self._restore_mode()
            raise
        self.defined: set[str] = set()

    def log(self, scalars: list[Scalar], number: int) -> None:
        row = {}
        for scalar in scalars:
            if scalar.tag not in self.defined:
                self.run.define_metric(scalar.axis, hidden=True)
                self.run.define_metric(scalar.tag, step_metric=scalar.axis)
                self.defined.add(scalar.tag)
            row[scalar.tag] = scalar.value
            row[scalar.axis] = scalar.step
        self.run.log(row, step=number)

    def publish(self, report_dir: Path, step: int) -> None:
        # Into the run's files under report/, uploaded with the run by `wandb sync`.
        self.run.save(str(report_dir / "*"), base_path=str(report_dir.parent), policy="now")

    def close(self, outcome: str) -> None:
        import wandb

        try:
            self.run.finish(exit_code=0 if outcome == "finished" else 1)
            wandb.teardown()  # W&B's service process goes now, not at the driver's exit
        finally:
            self._restore_mode()

    def _restore_mode(self) -> None:
        if self.mode_before is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = self.mode_before
