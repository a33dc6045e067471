"""Bad configs fail before any work starts, naming the key and where the value came from."""

import subprocess
import sys

import pytest

from crdist.config import ConfigError
from crdist.study import load_study
from tests.helpers import ROOT, study


def write(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_the_demo_config_loads_with_the_documented_defaults():
    study = load_study(ROOT / "configs" / "demo.yaml")
    assert study.data.benchmark == "seq-digits"
    assert (study.data.tasks, study.data.classes_per_task) == (5, 2)
    assert study.train.methods == ["sgd", "lpft"]
    assert study.train.zero_stage == 2 and study.train.workers == 2
    assert study.evaluate.protocols == ["knn", "linear", "finetune"]


def test_an_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "train:\n  zero_stag: 3\n")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    message = str(err.value)
    assert str(path) in message
    assert "train.zero_stag" in message
    assert "did you mean 'train.zero_stage'" in message


def test_a_wrong_type_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "train:\n  epochs: three\n")
    with pytest.raises(ConfigError, match=rf"{path}: train\.epochs: must be an integer, got a string \('three'\)"):
        load_study(path)


def test_a_boolean_is_not_accepted_as_a_number(tmp_path):
    path = write(tmp_path, "evaluate:\n  knn:\n    k: true\n")
    with pytest.raises(ConfigError, match=r"evaluate\.knn\.k: must be an integer"):
        load_study(path)


@pytest.mark.parametrize(
    "text, key, phrase",
    [
        ("data:\n  tasks: 0\n", "data.tasks", "must be at least 1"),
        ("train:\n  zero_stage: 4\n", "train.zero_stage", "must be one of 0, 1, 2, 3 (got 4)"),
        ("train:\n  methods: [sgd, ewc2]\n", "train.methods[1]", "unknown method 'ewc2'"),
        ("model:\n  backbone: resnet-18\n", "model.backbone", "did you mean 'resnet18'"),
        ("lpft:\n  probe_fraction: 1.5\n", "lpft.probe_fraction", "must be in (0, 1]"),
    ],
)
def test_impossible_values_name_the_key(tmp_path, text, key, phrase):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert f"{path}: {key}: " in str(err.value)
    assert phrase in str(err.value)


def test_set_overrides_any_field_and_errors_name_the_override(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 2\n")
    study = load_study(path, ["train.zero_stage=3", "evaluate.knn.k=7", "train.methods=[lpft]"])
    assert (study.train.zero_stage, study.evaluate.knn.k, study.train.methods, study.train.epochs) == (3, 7, ["lpft"], 2)
    with pytest.raises(ConfigError, match=r"^--set train\.zero_stage=4: train\.zero_stage: must be one of"):
        load_study(path, ["train.zero_stage=4"])
    with pytest.raises(ConfigError, match=r"^--set evaluate\.knn\.kk=3: evaluate\.knn\.kk: unknown key"):
        load_study(path, ["evaluate.knn.kk=3"])


def test_the_cli_exits_with_the_message_before_starting_anything(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "crdist", "run", "--set", "train.bogus=1", "--set", f"runs_dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert "crdist: error: --set train.bogus=1: train.bogus: unknown key in section 'train'" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_a_run_begun_before_a_key_existed_resumes_and_a_changed_value_is_refused(tmp_path):
    import yaml

    from crdist.config import to_dict
    from crdist.orchestrate.rundir import RunDir, RunDirError

    run = RunDir(tmp_path / "run")
    older = to_dict(study())
    del older["train"]["optimizer"], older["data"]["augment"]  # as a version before these keys wrote it
    run.root.mkdir()
    run.config_file.write_text(yaml.safe_dump(older, sort_keys=False))
    assert run.open(study()) is True  # the new keys' defaults are what the run had
    # A value written as an int where the field is a float, and a setting that changes no result.
    assert run.open(study(train={"decoded_cache_mb": 64})) is True
    with pytest.raises(RunDirError, match="optimizer"):
        run.open(study(train={"optimizer": "sgd"}))
