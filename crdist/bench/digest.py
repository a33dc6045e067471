"""``crdist bench digest``: what checking files against their digests costs (crdist/integrity.py).

1. The hash on a file of ``--gib`` GiB (random bytes, read from the page cache as a resume reads a
   checkpoint it just found): XXH3-128, which crdist records, against sha256, which shard
   manifests have always had.
2. A mid-task checkpoint of a real backbone (``--backbone``, default resnet18): its weights and
   AdamW's two moments, saved through ``TaskCheckpoints.save`` as one rank writes them. Timed:
   finding the newest sound checkpoint (every file re-hashed), against ``torch.load`` of the same
   files, which a resume does anyway (and which is itself a small part of a resume: Ray Train's
   start of a worker group takes tens of seconds, ``crdist bench resume``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from crdist.data.shards import sha256_of
from crdist.integrity import digest_file


def bench_digest(gib: float, backbone: str) -> int:
    with tempfile.TemporaryDirectory(prefix="crdist-bench-digest-") as tmp:
        path = Path(tmp) / "file.bin"
        size = int(gib * 2**30)
        with open(path, "wb") as f:
            for _ in range(0, size, 1 << 24):
                f.write(os.urandom(min(1 << 24, size - f.tell())))
        rows = [("xxh3_128 (crdist's records)", _seconds(lambda: digest_file(path)), size),
                ("sha256 (shard manifests)", _seconds(lambda: sha256_of(path)), size)]
        path.unlink()
        print(f"bench digest: one file of {size / 2**30:.2f} GiB, from the page cache\n")
        print(f"{'hash':<28}  {'seconds':>8}  {'GiB/s':>6}")
        for name, seconds, nbytes in rows:
            print(f"{name:<28}  {seconds:8.3f}  {nbytes / 2**30 / seconds:6.2f}")

        load, verify, nbytes = _checkpoint(Path(tmp) / "checkpoints", backbone)
        print(f"\na checkpoint of {backbone} with AdamW's moments ({nbytes / 2**20:.1f} MiB, one rank):")
        print(f"  verify every file (newest sound checkpoint): {verify:.3f} s")
        print(f"  torch.load of its files (what a resume reads anyway): {load:.3f} s")
        print(f"  verification adds {verify / load:.1%} to loading it")
    return 0


def _seconds(work) -> float:
    work()  # once for the page cache and the code paths; the second is timed
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


class _OneRankEngine:
    """What a DeepSpeed engine writes for one rank at ZeRO-0: the module's weights, the optimizer's."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def save_checkpoint(self, directory, tag, client_state, save_latest):
        folder = Path(directory, tag)
        folder.mkdir(parents=True)
        torch.save({"module": self.model.state_dict()}, folder / "mp_rank_00_model_states.pt")
        torch.save({"optimizer": self.optimizer.state_dict()}, folder / "optim_states.pt")


def _checkpoint(directory: Path, backbone: str) -> tuple[float, float, int]:
    from crdist.config import from_dict
    from crdist.models.classifier import build_classifier
    from crdist.models.config import ModelConfig
    from crdist.train.checkpoint import Position, TaskCheckpoints

    model = build_classifier(from_dict(ModelConfig, {"backbone": backbone}, source="bench"), 3, 100, 0,
                             image_size=32)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # AdamW's moments exist after a step
    checkpoints = TaskCheckpoints(directory)
    saved = checkpoints.save(_OneRankEngine(model, optimizer), Position(1, 0, 1), rank=0, world=1,
                             barrier=lambda: None)
    files = [p for p in saved.rglob("*.pt")]
    nbytes = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())
    load = _seconds(lambda: [torch.load(p, weights_only=False) for p in files])
    verify = _seconds(lambda: TaskCheckpoints(directory).newest_sound())
    return load, verify, nbytes
