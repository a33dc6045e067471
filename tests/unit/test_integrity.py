"""Digests of what crdist writes and reads back (crdist/integrity.py): a file that changed after it
was written is refused, never used."""

import json
from pathlib import Path

import pytest
import torch

from crdist.errors import CrdistError
from crdist.integrity import DamagedFile, problem, record_path, sealed_path, verify
from crdist.models.weights import load_weights, save_weights
from crdist.train.checkpoint import COMPLETE, Position, TaskCheckpoints, load_method_state, save_method_state


def flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_sealed_file_is_checked_against_the_digest_written_with_it(tmp_path):
    path = tmp_path / "result.json"
    with sealed_path(path) as tmp:
        tmp.write_text(json.dumps({"accuracy": 0.5}) * 20)
    assert record_path(path).is_file() and problem(path) is None
    original = path.read_bytes()

    flip_byte(path)
    assert "differs from the digest" in problem(path)
    path.write_bytes(original[:-7])
    assert "bytes where" in problem(path)
    path.write_bytes(original)
    assert problem(path) is None
    record_path(path).unlink()
    assert "no digest recorded" in problem(path)
    path.unlink()
    assert problem(path) == "missing"
    with pytest.raises(DamagedFile, match="result.json: missing"):
        verify(path)


def test_a_write_that_fails_before_its_rename_leaves_nothing_that_looks_written(tmp_path):
    path = tmp_path / "c_1.safetensors"
    with pytest.raises(OSError):
        with sealed_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device")
    assert not path.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_weights_crdist_wrote_are_refused_once_damaged_and_a_foreign_file_still_loads(tmp_path):
    path = tmp_path / "c_1.safetensors"
    save_weights({"w": torch.arange(64, dtype=torch.float32)}, path)
    assert torch.equal(load_weights(path)["w"], torch.arange(64, dtype=torch.float32))
    flip_byte(path, offset=-4)  # the top byte of the last float: still a valid safetensors file
    with pytest.raises(CrdistError, match="c_1.safetensors: its content differs"):
        load_weights(path)
    # Weights from elsewhere (converted pretrained files) have no record and load as before.
    foreign = tmp_path / "pretrained.safetensors"
    save_weights({"w": torch.ones(3)}, foreign)
    record_path(foreign).unlink()
    assert torch.equal(load_weights(foreign)["w"], torch.ones(3))
    # ...but where crdist requires its own record, that file is refused.
    with pytest.raises(DamagedFile, match="no digest recorded"):
        verify(foreign)


def test_a_method_state_file_that_is_damaged_or_missing_is_refused(tmp_path):
    state = tmp_path / "c_1.state"
    for rank in (0, 1):
        save_method_state(state, rank, {"fisher": torch.full((4,), float(rank))})
    assert torch.equal(load_method_state(str(state), 1, 2, written_by=2)["fisher"], torch.ones(4))
    (state / "rank-0.pt").unlink()
    with pytest.raises(DamagedFile, match="rank-0.pt: missing"):
        load_method_state(str(state), 1, 2, written_by=2)


class _Engine:
    """Stands in for a DeepSpeed engine's ``save_checkpoint``: one real file per checkpoint."""

    def __init__(self, value):
        self.value = value

    def save_checkpoint(self, directory, tag, client_state, save_latest):
        Path(directory, tag).mkdir(parents=True)
        torch.save({"weights": torch.full((256,), float(self.value))}, Path(directory, tag, "model_states.pt"))


def _save(checkpoints, step):
    position = Position(step=step, epoch=0, batch_in_epoch=step, losses=[1.0])
    return checkpoints.save(_Engine(step), position, rank=0, world=1, barrier=lambda: None,
                            method_state={"buffer": torch.arange(step)})


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "complete"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_it_taken(tmp_path, damage):
    checkpoints = TaskCheckpoints(tmp_path / "task-2", keep=2)
    _save(checkpoints, 10)
    newest = _save(checkpoints, 20)
    assert set(json.loads((newest / COMPLETE).read_text())["files"]) == {
        "engine/model_states.pt", "method-rank0.pt", "position-rank0.json"}
    target = newest / "engine" / "model_states.pt"
    if damage == "flip":
        flip_byte(target)
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:500])
    elif damage == "delete":
        (newest / "method-rank0.pt").unlink()
    else:
        flip_byte(newest / COMPLETE, offset=3)  # the record itself

    assert checkpoints.latest() == newest  # complete, as far as its marker goes
    assert TaskCheckpoints(tmp_path / "task-2").newest_sound() == tmp_path / "task-2" / "step-000010"
    assert (tmp_path / "task-2" / "step-000020.damaged").is_dir()  # kept for a person to look at
    assert checkpoints.latest() == tmp_path / "task-2" / "step-000010"


def test_with_every_checkpoint_damaged_the_task_starts_from_its_beginning(tmp_path):
    checkpoints = TaskCheckpoints(tmp_path / "task-1")
    for step in (10, 20):
        flip_byte(_save(checkpoints, step) / "position-rank0.json", offset=5)
    assert checkpoints.newest_sound() is None
    assert [d["file"].rsplit("/", 1)[1] for d in checkpoints.damaged] == ["step-000020", "step-000010"]
    assert all("position-rank0.json" in d["reason"] for d in checkpoints.damaged)
