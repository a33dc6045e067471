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
    from crdist.orchestrate.claim import admit
    from crdist.rundir import RunDir, RunDirError

    run = RunDir(tmp_path / "run")
    older = to_dict(study())
    del older["train"]["optimizer"], older["data"]["augment"]  # as a version before these keys wrote it
    run.root.mkdir()
    run.config_file.write_text(yaml.safe_dump(older, sort_keys=False))
    assert admit(run, study()) is True  # the new keys' defaults are what the run had
    # A value written as an int where the field is a float, and a setting that changes no result.
    assert admit(run, study(train={"decoded_cache_mb": 64})) is True
    with pytest.raises(RunDirError, match="optimizer"):
        admit(run, study(train={"optimizer": "sgd"}))


# ---------------------------------------------------------------- base: a file extending another


def test_a_file_merges_its_keys_over_its_base(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text(
        "name: base\ntrain:\n  epochs: 3\n  methods: [sgd, lpft]\nevaluate:\n  knn: {k: 7, temperature: 0.5}\n")
    path = write(tmp_path, "base: shared/base.yaml\ntrain:\n  methods: [er]\n  lr: 0.1\nevaluate:\n  knn: {k: 9}\n")
    study = load_study(path)
    assert study.name == "base"  # kept from the base
    assert (study.train.epochs, study.train.lr) == (3, 0.1)  # a mapping merges key by key
    assert study.train.methods == ["er"]  # a list replaces the base's
    assert (study.evaluate.knn.k, study.evaluate.knn.temperature) == (9, 0.5)


def test_an_error_in_a_key_from_the_base_names_the_base_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  epochs: three\n  zero_stag: 2\n")
    path = write(tmp_path, "base: base.yaml\ntrain:\n  zero_stage: 3\n")
    with pytest.raises(ConfigError, match=rf"^{base} \(base of {path}\): train\.epochs: must be an integer"):
        load_study(path)
    path.write_text("base: base.yaml\ntrain:\n  epochs: 2\n")  # the base's other mistake
    with pytest.raises(ConfigError, match=rf"^{base} \(base of {path}\): train\.zero_stag: unknown key"):
        load_study(path)
    path.write_text("base: base.yaml\ntrain:\n  epochs: 2\n  zero_stag: 2\n")  # now the file's own
    with pytest.raises(ConfigError, match=rf"^{path}: train\.zero_stag: unknown key"):
        load_study(path)
    with pytest.raises(ConfigError, match=r"^--set train\.zero_stag=1: train\.zero_stag: unknown key"):
        load_study(path, ["train.zero_stag=1"])


def test_files_that_extend_each_other_in_a_cycle_are_refused(tmp_path):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("base: second.yaml\n")
    second.write_text("base: first.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=rf"cycle: {first} → {second} → {first}$"):
        load_study(first)


def test_a_missing_base_file_is_named(tmp_path):
    path = write(tmp_path, "base: ../nowhere.yaml\n")
    with pytest.raises(ConfigError, match=rf"^{path}: base: \.\./nowhere\.yaml: no such config file"):
        load_study(path)


def test_a_sweep_files_base_is_still_its_study_config(tmp_path):
    from crdist.sweep import load_sweep

    study_file = write(tmp_path, "name: swept\n")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("name: s\nbase: study.yaml\naxes:\n  seed: [0, 1]\n")
    sweep, base, points = load_sweep(sweep_file)
    assert (sweep.base, base, len(points)) == ("study.yaml", study_file, 2)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs" / "paper").glob("*.yaml")))
def test_the_paper_configs_extend_a_top_level_config(name):
    import yaml

    text = yaml.safe_load((ROOT / "configs" / "paper" / name).read_text())
    assert (ROOT / "configs" / "paper" / text["base"]).resolve().parent == ROOT / "configs"
    assert load_study(ROOT / "configs" / "paper" / name).name.startswith("paper-")


# ---------------------------------------------------------------- the reference: documented fields


def test_every_config_field_is_documented():
    from crdist.config_reference import reference, study_reference, undocumented
    from crdist.sweep import SweepConfig

    missing = undocumented(study_reference()) + [f"(sweep file) {key}" for key in undocumented(reference(SweepConfig))]
    assert not missing, (
        "these config fields have no docstring (a string literal on the line after the field):\n  "
        + "\n  ".join(missing)
    )


def test_field_docs_follow_base_classes_and_report_the_missing():
    from dataclasses import dataclass

    from crdist.config_reference import field_docs, reference, undocumented

    @dataclass(frozen=True)
    class Parent:
        size: int = 1
        """Inherited."""
        bare: int = 2

    @dataclass(frozen=True)
    class Child(Parent):
        size: int = 3
        """Overridden."""

    assert field_docs(Child) == {"size": "Overridden."}
    assert undocumented(reference(Child, "child")) == ["child", "child.bare"]


def test_the_configuration_page_is_what_crdist_config_generates():
    from crdist.config_reference import MARKDOWN_COMMAND, markdown

    page = ROOT / "docs" / "configuration.md"
    assert page.is_file() and page.read_text() == markdown(), f"docs/configuration.md is out of date: {MARKDOWN_COMMAND}"


def test_crdist_config_prints_a_key_a_section_and_names_close_matches(capsys):
    from crdist.cli import main

    assert main(["config", "train.lr"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("train.lr\n  type:    float\n  default: 0.003\n  Peak learning rate")
    assert main(["config", "train.optimizer"]) == 0
    assert "  allowed: adamw, sgd\n" in capsys.readouterr().out
    assert main(["config", "evaluate.knn"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("evaluate.knn\n") and "evaluate.knn.k: int = 5\n" in out and "train.lr" not in out
    assert main(["config", "lpft"]) == 0  # a method's section, from the registry
    assert "lpft.probe_fraction: float = 0.3" in capsys.readouterr().out
    assert main(["config", "train.lrr"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("crdist: error: no config key 'train.lrr' (did you mean train.lr")
    assert "Traceback" not in captured.err and len(captured.err.splitlines()) == 1


def test_crdist_run_help_ends_with_the_config_sections(capsys):
    from crdist.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    epilog = " ".join(capsys.readouterr().out.split()[-60:])
    assert "data, model, pretrain, train" in epilog and "lpft" in epilog and "`crdist config SECTION`" in epilog
