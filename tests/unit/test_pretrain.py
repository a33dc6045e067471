"""The pretrain stage: c_0's backbone trained on a source stream, once per fingerprint.

The fingerprint, checked in-process: every setting that determines the pretrained weights
changes it, and settings of where or how it runs do not (the run for real:
tests/integration/test_pretrain_resume.py)."""


import pytest

from crdist.orchestrate import pretrain
from tests.helpers import study

# Digits 6–9 are the source (held back); the study's 2 tasks are digits 0–3.
SOURCE = {"benchmark": "seq-digits", "class_order": [6, 7, 8, 9, 0, 1, 2, 3, 4, 5], "classes_per_task": 4, "tasks": 1}


def planned(tmp_path, digits_shards, **changes):
    # A changed source is prepared apart (a shards directory holds one preparation).
    source = "-".join(f"{k}={v}" for k, v in changes.items() if k.startswith("pretrain__data__")).replace(" ", "")
    sections = {"data": {"shards": str(digits_shards)},
                "pretrain": {"steps": 30, "data": {**SOURCE, "shards": str(tmp_path / f"source{source}")},
                             "dir": str(tmp_path / "pretrained")}}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if not name:  # a top-level key
            sections[section] = value
            continue
        node = sections.setdefault(section, {})
        for part in name.split("__")[:-1]:
            node = node.setdefault(part, {})
        node[name.split("__")[-1]] = value
    cfg = study(**sections)
    from crdist.data.manifest import Manifest

    return pretrain.plan(cfg, Manifest.load(digits_shards), log=lambda line: None)


def test_every_setting_that_determines_the_weights_changes_the_fingerprint(tmp_path, digits_shards):
    base = planned(tmp_path, digits_shards)
    assert base.directory.parent == (tmp_path / "pretrained").resolve()
    assert base.directory.name.startswith("seq-digits-small-cnn-30steps-")
    changed = {
        "pretrain__steps": 31, "pretrain__lr": 0.01, "pretrain__batch_size": 8, "pretrain__seed": 1,
        "pretrain__data__class_order": [5, 6, 7, 8, 9, 0, 1, 2, 3, 4],  # another source
        "pretrain__data__augment": "crop_flip", "model__backbone": "small-cnn-gn", "train__optimizer": "sgd",
        "train__weight_decay": 0.01, "train__workers": 1, "train__zero_stage": 3,
    }
    for key, value in changed.items():
        assert planned(tmp_path, digits_shards, **{key: value}).fingerprint != base.fingerprint, key
    # Where and how it runs, and the study's own tasks and seed, leave it as it is.
    same = {"pretrain__dir": str(tmp_path / "elsewhere"), "train__log_every": 1, "train__max_failures": 0,
            "checkpoint__every_steps": 7, "seed": 5, "train__methods": ["ewc"], "train__max_steps": 3,
            "data__tasks": 2}
    for key, value in same.items():
        assert planned(tmp_path, digits_shards, **{key: value}).fingerprint == base.fingerprint, key


def test_model_init_counts_by_its_bytes_not_its_path(tmp_path, digits_shards):
    from crdist.models.classifier import build_classifier
    from crdist.models.weights import save_weights

    cfg = study()
    first, copy, other = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    save_weights(build_classifier(cfg.model, 1, 10, seed=0).state_dict(), first)
    copy.write_bytes(first.read_bytes())
    save_weights(build_classifier(cfg.model, 1, 10, seed=1).state_dict(), other)
    prints = [planned(tmp_path, digits_shards, model__init=str(p)).fingerprint for p in (first, copy, other)]
    assert prints[0] == prints[1] != prints[2]


def test_a_source_the_backbone_cannot_take_is_refused(tmp_path, digits_shards):
    with pytest.raises(pretrain.PretrainError, match="streams 1×16×16 images, but the study's tasks stream 1×8×8"):
        planned(tmp_path, digits_shards, pretrain__data__image_size=16)


def test_without_steps_there_is_no_stage_and_its_settings_change_no_result(tmp_path, digits_shards):
    from crdist import config
    from crdist.orchestrate.claim import _results_part

    assert planned(tmp_path, digits_shards, pretrain__steps=0) is None
    off = config.to_dict(study())
    moved = config.to_dict(study(pretrain={"data": SOURCE, "dir": "x"}))
    assert _results_part(off) == _results_part(moved)
    on = config.to_dict(study(pretrain={"steps": 5, "data": SOURCE}))
    assert _results_part(on) != _results_part(off)
    assert _results_part(on) == _results_part(config.to_dict(study(pretrain={"steps": 5, "data": SOURCE, "dir": "y"})))
