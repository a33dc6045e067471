"""TensorBoard: scalars into event files under <run>/tracking/tensorboard; the report as text (its
markdown, tables included) and its plots as images."""

from __future__ import annotations

from pathlib import Path

from crdist.track.scalars import Scalar


class TensorBoardTracker:
    key = "tensorboard"
    label = "TensorBoard"

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        # Each driver run adds its own event file to the directory; TensorBoard reads them all.
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, scalars: list[Scalar], number: int) -> None:
        for scalar in scalars:
            self.writer.add_scalar(scalar.tag, scalar.value, scalar.step)
        self.writer.flush()  # a killed driver then loses at most the event being written

    def publish(self, report_dir: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_text("report", (report_dir / "report.md").read_text(), step)
        for plot in sorted(report_dir.glob("*.png")):
            with Image.open(plot) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"report/{plot.stem}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self, outcome: str) -> None:
        self.writer.close()
